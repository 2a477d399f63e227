"""Matrix-factorisation router in the style of RouteLLM's "mf" router.

RouteLLM (lm-sys/RouteLLM, routellm/routers/matrix_factorization/model.py) scores a (model, prompt) pair as

    s(j, q) = w · ( P_j / ‖P_j‖ ⊙ W e(q) )        P: learned model embeddings (dim), W: text_dim → dim, no bias

and trains it on pairwise preferences, σ(s(win, q) − s(lose, q)), with BCE, Adam (lr 3e-4, weight decay
1e-5), batch 64, 100 epochs, dim 128 and Gaussian noise (α = 0.1) on the prompt embedding as a stabiliser.

Our outcome table holds per-model success rather than pairwise wins, so the same bilinear score is trained
pointwise with a per-model bias b_j (a pairwise difference cancels biases; an absolute probability needs one):

    P̂_j(q) = σ( w · (P_j / ‖P_j‖ ⊙ W e(q)) + b_j ),   loss = BCE(P̂_j(q), y_qj) over observed (q, j)

Soft labels enter BCE directly; NaN targets are masked. With validation data the epoch with the lowest
validation loss is kept. e(q) is the sentence embedding (MiniLM by default, RouteLLM used OpenAI's
text-embedding-3-small).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from kronaxis_lab.export.formats import save_arrays

from .base import Classifier, as_queries, check_fit_inputs
from .embedding import Embedder, UsesEmbedder

STATE_FILE = "mf_state.npz"


def _build_module(n_models: int, text_dim: int, dim: int, use_proj: bool):
    import torch
    from torch import nn

    class MFModule(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.P = nn.Embedding(n_models, dim)
            self.text_proj = nn.Linear(text_dim, dim, bias=False) if use_proj else nn.Identity()
            self.classifier = nn.Linear(dim, 1, bias=False)
            self.bias = nn.Parameter(torch.zeros(n_models))

        def forward(self, q: "torch.Tensor") -> "torch.Tensor":
            """(B, text_dim) → (B, n_models) logits, all models at once."""
            p = nn.functional.normalize(self.P.weight, p=2, dim=1)  # (m, dim)
            # w·(p_j ⊙ Wq) = (Wq) · (w ⊙ p_j): one matmul for the whole fleet
            return self.text_proj(q) @ (p * self.classifier.weight).T + self.bias

    return MFModule()


class MFRouter(UsesEmbedder, Classifier):
    def __init__(
        self,
        dim: int = 128,
        use_proj: bool = True,
        lr: float = 3e-4,
        weight_decay: float = 1e-5,
        batch_size: int = 64,
        epochs: int = 100,
        noise_alpha: float = 0.1,
        seed: int = 42,
        embedding: Mapping[str, Any] | Embedder | None = None,
        show_progress: bool = True,
    ) -> None:
        self.dim = dim
        self.use_proj = use_proj
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.epochs = epochs
        self.noise_alpha = noise_alpha
        self.seed = seed
        self.embedding = embedding
        self.show_progress = show_progress

    @staticmethod
    def _masked_bce(logits, y, mask):
        import torch

        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
        return (loss * mask).sum() / mask.sum().clamp(min=1)

    def fit(
        self,
        queries: Sequence[str],
        targets: np.ndarray,
        model_names: Sequence[str],
        val_queries: Sequence[str] | None = None,
        val_targets: np.ndarray | None = None,
        *,
        model_costs: Mapping[str, float] | Sequence[float] | None = None,
    ) -> "MFRouter":
        import torch

        queries, y, model_names, vq, vy = check_fit_inputs(queries, targets, model_names, val_queries, val_targets)
        if not queries:
            raise ValueError("MFRouter.fit: no training queries")
        self.model_names_ = model_names
        gen = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)  # parameter init
        X = torch.from_numpy(self.embedder.encode(queries))
        Y = torch.from_numpy(np.nan_to_num(y, nan=0.0)).float()
        M = torch.from_numpy(np.isfinite(y)).float()
        val = None
        if vq:
            val = (torch.from_numpy(self.embedder.encode(vq)), torch.from_numpy(np.nan_to_num(vy)).float(),
                   torch.from_numpy(np.isfinite(vy)).float())

        self.text_dim_ = int(X.shape[1])
        net = _build_module(len(model_names), self.text_dim_, self.dim, self.use_proj)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        best, self.history_ = (float("inf"), None), []
        bar = tqdm(range(self.epochs), desc="mf", disable=not self.show_progress)
        for epoch in bar:
            net.train()
            perm, total = torch.randperm(len(X), generator=gen), 0.0
            for a in range(0, len(X), self.batch_size):
                b = perm[a : a + self.batch_size]
                q = X[b] + torch.randn(X[b].shape, generator=gen) * self.noise_alpha  # RouteLLM's noise
                loss = self._masked_bce(net(q), Y[b], M[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(b)
            info = {"epoch": epoch, "train_loss": total / len(X)}
            if val is not None:
                net.eval()
                with torch.no_grad():
                    info["val_loss"] = float(self._masked_bce(net(val[0]), val[1], val[2]))
                if info["val_loss"] < best[0]:
                    best = (info["val_loss"], {k: v.detach().clone() for k, v in net.state_dict().items()})
            self.history_.append(info)
            bar.set_postfix({k: round(v, 4) for k, v in info.items() if k != "epoch"})
        if best[1] is not None:
            net.load_state_dict(best[1])
        self.net_ = net.eval()
        return self

    def predict_proba(self, queries: Sequence[str] | str) -> np.ndarray:
        import torch

        queries = as_queries(queries)
        if not queries:
            return np.zeros((0, len(self.model_names_)))
        with torch.no_grad():
            logits = self.net_(torch.from_numpy(self.embedder.encode(queries)))
        return torch.sigmoid(logits).double().numpy()

    def export_runtime(self, directory: Path, **graph_options: Any) -> dict[str, Any]:
        """Bundle node (`kronaxis_lab.export.runtimes.MfRuntime`): the encoder in `encoder/`; P, w, bias and
        the projection W (unless use_proj is off) in weights.npz."""
        directory = Path(directory)
        encoder = self.embedder.export_runtime(directory / "encoder", **graph_options)
        state = {k: v.detach().cpu().numpy() for k, v in self.net_.state_dict().items()}
        arrays = {"P": state["P.weight"], "w": state["classifier.weight"], "bias": state["bias"]}
        if "text_proj.weight" in state:
            arrays["proj"] = state["text_proj.weight"]
        save_arrays(directory / "weights.npz", **arrays)
        return {"kind": "kronaxis_lab.export.runtimes.MfRuntime", "label_order": list(self.model_names_),
                "files": {"weights": "weights.npz"}, "nodes": {"encoder": encoder}}

    def save_state(self, directory: Path) -> None:
        arrays = {k: v.detach().cpu().numpy() for k, v in self.net_.state_dict().items()}
        np.savez(directory / STATE_FILE, text_dim=np.int64(self.text_dim_), **arrays)

    def load_state(self, directory: Path) -> None:
        import torch

        with np.load(directory / STATE_FILE, allow_pickle=False) as z:
            self.text_dim_ = int(z["text_dim"])
            state = {k: torch.from_numpy(z[k]) for k in z.files if k != "text_dim"}
        net = _build_module(len(self.model_names_), self.text_dim_, self.dim, self.use_proj)
        net.load_state_dict(state)
        self.net_ = net.eval()
