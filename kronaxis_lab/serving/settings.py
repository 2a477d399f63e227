"""Router settings, validated with clear errors: the one source of their defaults.

`kronaxis-serve` composes these models' defaults as its `settings:` and `bundle_options:` nodes
(configs/serve.yaml lists no value of its own for them), so every value is overridable from the command line,
e.g. `kronaxis-serve bundle=<dir> settings.batching.max_batch=128 bundle_options.batch_size=32`.
Defaults are sized for one router process on a small (2-core) CPU box; the measurements behind them are in
benchmarks/route_throughput.md.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

from pydantic import BaseModel, Field, ValidationError


class ServeConfigError(ValueError):
    """The serve configuration is invalid."""


class _Strict(BaseModel):
    model_config = {"extra": "forbid"}


class BatchingSettings(_Strict):
    """Micro-batching of classifier inference across concurrent requests."""

    enabled: bool = True
    max_batch: int = Field(32, ge=1)  # texts per classifier call
    max_wait_ms: float = Field(2.0, ge=0)  # how long the first text of a batch waits for company
    workers: int = Field(2, ge=1)  # batches in flight at once: one per core (ONNX sessions run single-threaded)


class LimitSettings(_Strict):
    max_body_bytes: int = Field(1_000_000, ge=1024)  # 413 beyond this (before JSON parsing)
    max_messages: int = Field(512, ge=1)
    max_route_batch: int = Field(1024, ge=1)  # requests in one POST /v1/route {"requests": [...]}


class SessionSettings(_Strict):
    """Where the stickiness session key and routing token come from."""

    enabled: bool = True
    header: str = "x-kronaxis-session"  # session key header; falls back to the OpenAI `user` field
    use_user_field: bool = True
    token_header: str = "x-kronaxis-route"  # signed routing token: returned, and accepted when echoed
    scheme: Literal["all_turns", "first_turn"] = "all_turns"  # floor = max over all earlier turns | first turn


class RateLimitSettings(_Strict):
    """Per-API-key token bucket: `burst` requests at once, refilled at `requests_per_minute` (429 + Retry-After)."""

    requests_per_minute: float | None = Field(600.0, gt=0)  # per key; null = unlimited
    burst: int = Field(60, ge=1)


class AuthSettings(_Strict):
    """Client authentication: `Authorization: Bearer <router API key>` (what the openai SDK sends).

    Keys come from the environment variable `keys_env` (comma/whitespace separated) and/or `keys_file` (one per
    line, `#` comments); either may hold a plain key (hashed at load, at least 20 characters) or `sha256:<hex>`
    (the hash only: `kronaxis_lab.serving.auth.hash_key`). Only sha256 digests are kept in memory.
    """

    enabled: bool | None = None  # null = on unless the server binds a loopback address (127.0.0.1, ::1, localhost)
    keys_env: str | None = "KRONAXIS_API_KEYS"
    keys_file: str | None = None
    protect_metrics: bool = True  # /metrics needs a key too (it shows traffic and spend per key id)
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)


class ClassifyTextSettings(_Strict):
    """What the classifier reads: the last user turn (as in training), then the previous user turns as context.

    The current turn goes first because the encoder truncates on the right: context never pushes the query out.
    """

    context_turns: int = Field(1, ge=0)  # earlier user turns appended as context
    context_max_chars: int = Field(500, ge=0)  # per context turn
    max_chars: int = Field(4000, ge=1)  # whole classifier input
    separator: str = "\n\n"


class BundleOptions(_Strict):
    """How the router loads its bundle (`kronaxis_lab.export.bundle.load_bundle` arguments, tuned for serving)."""

    verify_hashes: bool = True  # refuse a bundle whose files changed after export
    intra_op_threads: int | None = Field(1, ge=1)  # onnxruntime threads per call: 1, and one batching worker
    # per core (multi-threaded runs of small batches spin and waste ~2x CPU); null = onnxruntime's default
    batch_size: int = Field(16, ge=1)  # a micro-batch is length-sorted into ONNX runs of this many texts
    # (little padding: padding to the longest text costs more than it saves)
    inter_op_threads: int | None = Field(None, ge=1)  # null = onnxruntime's default
    providers: list[str] | None = None  # onnxruntime execution providers; null = CPU

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> "BundleOptions":
        try:
            return cls(**dict(cfg or {}))
        except ValidationError as e:
            raise ServeConfigError(f"bundle_options: {e}") from e


class ServeSettings(_Strict):
    auto_models: list[str] = Field(default_factory=lambda: ["kronaxis/auto"])  # model names that mean "route"
    policy_prefix: str = "kronaxis/"  # "kronaxis/<policy>:<param>" overrides the operating point
    default_model: str | None = "kronaxis/auto"  # used when a request names no model (null: 400)
    variant: str | None = None  # bundle ONNX variant (null = the bundle's default, e.g. int8)
    classifier_failure: Literal["premium", "error"] = "premium"  # fail open to the premium model, or 503
    fallback_across_models: bool = True  # when a model's whole endpoint chain fails, try the next allowed model
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    session: SessionSettings = Field(default_factory=SessionSettings)
    classify: ClassifyTextSettings = Field(default_factory=ClassifyTextSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    # the data classes governance found, in the x-kronaxis-data-classes header, /v1/route's `data_classes`, the
    # reasons and 403 messages: off, because it tells a client exactly what tripped the detectors (bypass tuning)
    expose_data_classes: bool = False
    scan_threads: int = Field(2, ge=1)  # threads that parse bodies and run the governance scan off the event loop

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | "ServeSettings" | None) -> "ServeSettings":
        if isinstance(cfg, ServeSettings):
            return cfg
        try:
            return cls(**dict(cfg or {}))
        except ValidationError as e:
            raise ServeConfigError(f"serve settings: {e}") from e
