"""The tier predictor's own network when it is not the stock HF sequence classifier (tier_predictor.py).

`PooledTierModel` = an HF encoder (`AutoModel`) + one linear head over a pooled sentence vector:

- ``pooling="mean"``: the attention-masked mean of the last hidden states (how sentence-transformers trained
  MiniLM-L6: its CLS vector and pooler were never trained for sentence meaning);
- ``pooling="cls"``: the encoder's pooler output (dense + tanh over CLS), as `BertForSequenceClassification`.

With ``n_tasks > 0`` it is a multi-task network: an auxiliary softmax head predicts the query's task from the same
pooled vector during training (cross-entropy, weight `aux_weight`, train labels only). The auxiliary head is a
training signal only: it is not saved, exported or used to route, so decisions read the text alone.

Saved as the encoder's HF folder (`save_pretrained`) + `HEAD_FILE` (the routing head's weights, safetensors) +
`kronaxis_pooling` in the HF config; `load` rebuilds it. The forward returns `.logits` (and `.aux_loss` when
task labels are fed), so the Trainer, `predict_logits` and the ONNX exporter treat it like the stock model.
torch and transformers are heavy and optional at import time (a bundle is served without them), so the two
torch classes are built on first use (`PooledTierModel`, `TierModelOutput` are module attributes via PEP 562
`__getattr__`); importing this module costs nothing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kronaxis_lab.classifiers.heads import POOLED_HEAD_FILE as HEAD_FILE
from kronaxis_lab.classifiers.heads import POOLINGS

__all__ = ["HEAD_FILE", "POOLINGS", "mean_pool"]  # + PooledTierModel, TierModelOutput (module __getattr__)

#: label of a query without a task label in the auxiliary head's targets (ignored by the loss)
NO_TASK = -100

if TYPE_CHECKING:
    import torch


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of `hidden` (b, s, h) over the positions where `mask` (b, s) is 1 (all of them when None)."""
    if mask is None:
        return hidden.mean(1)
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


@functools.cache
def _torch_classes() -> dict[str, type]:
    """Define the torch classes (once, on first use: torch and transformers load here)."""
    import torch
    from transformers import AutoModel
    from transformers.utils import ModelOutput

    @dataclass
    class TierModelOutput(ModelOutput):
        logits: torch.Tensor | None = None
        aux_loss: torch.Tensor | None = None

    class PooledTierModel(torch.nn.Module):
        """Encoder + pooled linear routing head (+ optional auxiliary task head); see the module docstring."""

        def __init__(self, encoder, n_labels: int, pooling: str = "mean", n_tasks: int = 0,
                     aux_weight: float = 0.0):
            super().__init__()
            if pooling not in POOLINGS:
                raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
            if pooling == "cls" and getattr(encoder, "pooler", None) is None:
                raise ValueError(f"pooling='cls' needs an encoder with a pooler; {type(encoder).__name__} has none")
            self.encoder, self.pooling, self.aux_weight = encoder, pooling, float(aux_weight)
            self.config = encoder.config  # the Trainer, exporters and `_annotate_config` read/write it
            self.config.kronaxis_pooling = pooling
            hidden = int(encoder.config.hidden_size)
            p = getattr(encoder.config, "hidden_dropout_prob", None)
            self.dropout = torch.nn.Dropout(0.1 if p is None else float(p))
            self.classifier = torch.nn.Linear(hidden, int(n_labels))
            self.task_head = torch.nn.Linear(hidden, int(n_tasks)) if n_tasks else None
            init = getattr(encoder.config, "initializer_range", 0.02)
            for lin in (self.classifier, self.task_head):
                if lin is not None:
                    torch.nn.init.normal_(lin.weight, std=init)
                    torch.nn.init.zeros_(lin.bias)

        @property
        def base_model(self):  # what `_freeze`, `keep_layers` and the layer helpers walk
            return self.encoder

        @property
        def num_labels(self) -> int:
            return int(self.classifier.out_features)

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, task_ids=None) -> TierModelOutput:
            kw = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kw["token_type_ids"] = token_type_ids
            out = self.encoder(**kw)
            h = out.pooler_output if self.pooling == "cls" else mean_pool(out.last_hidden_state, attention_mask)
            h = self.dropout(h)
            aux = None
            if task_ids is not None and self.task_head is not None and self.aux_weight > 0:
                aux = self.aux_weight * torch.nn.functional.cross_entropy(
                    self.task_head(h).float(), task_ids.long(), ignore_index=NO_TASK)
                aux = torch.nan_to_num(aux)  # a batch with no labelled query: no auxiliary signal
            return TierModelOutput(logits=self.classifier(h), aux_loss=aux)

        # -- persistence -------------------------------------------------------------------------------
        def save(self, directory: Path) -> None:
            """The encoder's HF folder + the routing head (the auxiliary head is training-only: not kept)."""
            from safetensors.torch import save_file

            self.encoder.save_pretrained(directory)
            save_file({"weight": self.classifier.weight.detach().cpu().contiguous(),
                       "bias": self.classifier.bias.detach().cpu().contiguous()},
                      str(Path(directory) / HEAD_FILE))

        @classmethod
        def load(cls, directory: Path) -> "PooledTierModel":
            from safetensors.torch import load_file

            encoder = AutoModel.from_pretrained(directory)
            pooling = getattr(encoder.config, "kronaxis_pooling", None)
            if pooling not in POOLINGS:
                raise ValueError(f"{directory}/config.json: kronaxis_pooling must be one of {POOLINGS}, "
                                 f"got {pooling!r}")
            head = load_file(str(Path(directory) / HEAD_FILE))
            if set(head) != {"weight", "bias"} or head["weight"].ndim != 2:
                raise ValueError(f"{directory}/{HEAD_FILE}: expected a 2-d 'weight' and a 'bias' tensor")
            model = cls(encoder, int(head["weight"].shape[0]), pooling)
            model.classifier.load_state_dict(head)
            return model.eval()

    return {"TierModelOutput": TierModelOutput, "PooledTierModel": PooledTierModel}


def __getattr__(name: str):
    if name in ("PooledTierModel", "TierModelOutput"):
        return _torch_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
