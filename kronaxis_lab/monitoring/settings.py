"""Decision-log and shadow-evaluation settings: validated on construction, the one source of their defaults.

`kronaxis-serve` shows them as the root nodes `decision_log` and `shadow` of its config (registered from these
defaults by kronaxis_lab/pipelines/serve.py), so the command line reads
`kronaxis-serve bundle=<dir> decision_log.path=<log dir> decision_log.store_text=true shadow.enabled=true`.
The app takes both as one `MonitorSettings` (`create_app(..., monitor=...)`).
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import BaseModel, Field, ValidationError, model_validator

from kronaxis_lab.serving.settings import ServeConfigError

AGREEMENT = "kronaxis_lab.monitoring.agreement.AnswerAgreementGrader"


class _Strict(BaseModel):
    model_config = {"extra": "forbid"}


class DecisionLogSettings(_Strict):
    """Where and how the router records its decisions (kronaxis_lab/monitoring/decision_log.py)."""

    path: str | None = None  # log directory; null = no decision log
    store_text: bool = False  # also store the classifier's input text, after governance redaction
    store_sketch: bool = True  # a 64-number feature-hashing sketch of the redacted text (drift tests; no words)
    max_file_mb: float = Field(64.0, gt=0)  # the live file rotates beyond this (SQLite db + WAL)
    max_files: int = Field(8, ge=1)  # files kept, the live one included: the log never exceeds ~ max_file_mb × this
    queue_size: int = Field(10_000, ge=1)  # records waiting for the writer; a full queue drops (and counts) records
    batch_size: int = Field(256, ge=1)  # records per SQLite transaction
    flush_interval_s: float = Field(0.5, gt=0)  # the writer's longest wait before it writes what it has
    # server-side drift gauges: the reference sketches kronaxis-monitor writes (<out>/reference_sketch.npz);
    # the writer thread tests the last `drift_window` sketches against them every `drift_every` records
    drift_reference: str | None = None
    drift_window: int = Field(200, ge=10)
    drift_every: int = Field(100, ge=1)
    drift_permutations: int = Field(200, ge=19)


class ShadowSettings(_Strict):
    """Shadow evaluation of a sample of routed chat requests (kronaxis_lab/monitoring/shadow.py)."""

    enabled: bool = False
    sample_rate: float = Field(0.05, ge=0, le=1)  # share of answered (non-streamed) chat requests shadowed
    budget_usd_per_hour: float = Field(1.0, ge=0)  # shadow spend in any sliding hour never exceeds this
    reference_model: str | None = None  # the model routed answers are compared with; null = the bundle's premium
    probe_cheaper: bool = True  # for requests routed to the reference: also ask the cheapest allowed model
    # (a passing cheaper answer means the premium call was wasted)
    # a Grader node (`_target_` + arguments). An LLMJudgeGrader (configs/grader/llm_judge.yaml) means "judge both
    # answers with judge_model" (MT-Bench single-answer prompts); any other grader scores the cheaper answer with
    # the reference answer as its gold, the reference scoring 1 (default: agreement of final numbers, else token F1)
    grader: dict[str, Any] = Field(default_factory=lambda: {"_target_": AGREEMENT})
    judge_model: str | None = None  # fleet model (with an upstream) that runs the judge
    pass_score: float = Field(0.5, ge=0, le=1)  # a score at least this counts as a correct answer
    max_tokens: int = Field(512, ge=1)  # cap on each shadow answer's max_tokens (bounds the worst-case cost)
    judge_max_tokens: int = Field(512, ge=1)
    queue_size: int = Field(256, ge=1)  # sampled requests waiting; beyond, they are skipped (counted)
    concurrency: int = Field(1, ge=1)  # shadow requests in flight at once
    window: int = Field(500, ge=1)  # shadow rows behind the server's rolling misrouting gauges
    seed: int = 0  # the sampler's random stream

    @model_validator(mode="after")
    def _judge_needs_a_model(self) -> "ShadowSettings":
        target = str((self.grader or {}).get("_target_", ""))
        if self.enabled and target.endswith("LLMJudgeGrader") and not self.judge_model:
            raise ValueError("shadow.grader is an LLM judge: set shadow.judge_model to the fleet model that judges")
        return self


class MonitorSettings(_Strict):
    """The two together, as the router app takes them."""

    decision_log: DecisionLogSettings = Field(default_factory=DecisionLogSettings)
    shadow: ShadowSettings = Field(default_factory=ShadowSettings)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | "MonitorSettings" | None) -> "MonitorSettings":
        if isinstance(cfg, MonitorSettings):
            return cfg
        try:
            return cls(**{k: v for k, v in dict(cfg or {}).items() if v is not None})
        except ValidationError as e:
            raise ServeConfigError(f"decision_log / shadow settings: {e}") from e
