"""kronaxis_lab: learn where to send each LLM query (label → train → replay → export → serve)."""

__version__ = "0.1.0"
