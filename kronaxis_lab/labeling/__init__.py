"""Live labelling: question sets × fleet → outcome table (prompts, resumable call cache, runner)."""
