"""Labelling on a Ray cluster: any backend config replicated over Ray actors (one engine per GPU, or per CPU slot).

`kronaxis-label runner.ray={...}` wraps every model's backend in a `RayBackend`, itself a `Backend`, so the
label runner, its call cache (keyed on the wrapped config: a Ray run reuses calls cached without Ray) and its
graders are unchanged. Each replica is a Ray actor that builds the wrapped backend (transformers, vLLM, replay,
...) once, on the resources it asked for (`num_gpus: 1` → its own GPU, `CUDA_VISIBLE_DEVICES` set by Ray).
A call is cut into shards of `shard_size` requests; each shard goes to the replica with the fewest shards
outstanding (join-the-shortest-queue), and a replica runs its shards one after another, as one engine would.
Ray and the replicas start on the first call.

    kronaxis-label fleet=vllm_local 'runner.ray={num_replicas: 8, num_gpus: 1}' runner.max_concurrency=16  # 8 GPUs
    RAY_ADDRESS=auto kronaxis-label ... 'runner.ray={num_replicas: 32, num_gpus: 1, address: auto}'  # a cluster

Where vLLM's own parallelism fits better: one model too big for a GPU → `tensor_parallel_size: N` (and
`engine_kwargs: {distributed_executor_backend: ray}` across nodes) in configs/backend/vllm.yaml; N replicas in
one server → `vllm serve --data-parallel-size N`, or N `vllm serve` endpoints behind configs/backend/vllm_pool.yaml.
This wrapper is for the rest: many single-GPU replicas across nodes, or in-process backends that only batch.

Every node needs this checkout installed (`pip install -e ".[ray]"` in the same environment) and the data
and weights the wrapped backend reads. A replica that fails turns its shard into error rows, not a crash.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from hydra.utils import instantiate
from omegaconf import OmegaConf

from kronaxis_lab.backends.base import Backend, GenRequest, GenResult

log = logging.getLogger(__name__)

#: requests per replica call when neither `shard_size` nor the wrapped backend's `batch_size` says
DEFAULT_SHARD_SIZE = 8
#: a relative `backend` path that does not exist from the working directory is read from the checkout
PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: RayBackends of this process with live replicas; Ray, if one of them started it, stops when the last closes
_LIVE: set[int] = set()
_STARTED: list[bool] = [False]


def backend_node(backend: str | Path | Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> dict:
    """The wrapped backend's config as a plain dict: a backend YAML's path (as given, else relative to the
    checkout) or a config mapping, `overrides` merged over it, interpolations resolved (here, on the driver)."""
    if isinstance(backend, (str, Path)):
        path = Path(backend).expanduser()
        if not path.exists() and not path.is_absolute():
            path = PROJECT_ROOT / path
        if not path.is_file():
            raise FileNotFoundError(f"wrapped backend config {backend} not found")
        backend = OmegaConf.load(path)
    node = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(backend), OmegaConf.create(dict(overrides or {}))),
                                  resolve=True)
    if "_target_" not in node:
        raise ValueError("the wrapped `backend` config has no _target_")
    return node


class BackendReplica:
    """One Ray actor's backend (built in the actor's process, on its resources)."""

    def __init__(self, node: Mapping[str, Any], model: str):
        self.backend = instantiate(dict(node), model=model)
        self.pid = os.getpid()

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        return self.backend.generate(list(requests))

    def info(self) -> dict[str, Any]:
        import ray

        ctx = ray.get_runtime_context()
        return {"pid": self.pid, "node_id": ctx.get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}

    def close(self) -> None:
        self.backend.close()


class RayBackend(Backend):
    """`num_replicas` Ray actors, each running the wrapped backend config (see the module docstring).

    Args:
        model: fleet name the results are recorded under (passed to the wrapped backend too).
        backend: the wrapped backend: a backend YAML's path (configs/backend/vllm.yaml) or a config mapping.
        overrides: merged over the wrapped config, e.g. {batch_size: 16, engine_kwargs: {enforce_eager: true}}.
        num_replicas: actors (engines) to start.
        num_cpus / num_gpus: Ray resources per replica (a GPU each for a GPU engine).
        address: a Ray cluster ("auto", "ray://head:10001"); None = start a local instance (if none is running).
        init: extra `ray.init` arguments for a local instance, e.g. {num_cpus: 2, include_dashboard: false}.
        shard_size: requests per replica call; None = the wrapped backend's `batch_size`, else 8.
    """

    def __init__(self, model: str, backend: str | Mapping[str, Any], overrides: Mapping[str, Any] | None = None,
                 num_replicas: int = 2, num_cpus: float = 1, num_gpus: float = 0, address: str | None = None,
                 init: Mapping[str, Any] | None = None, shard_size: int | None = None):
        import ray  # noqa: F401  (fail early with a clear ImportError if the `ray` extra is missing)

        if num_replicas < 1:
            raise ValueError(f"{model}: num_replicas must be >= 1, got {num_replicas}")
        self.model, self.node = model, backend_node(backend, overrides)
        self.num_replicas, self.num_cpus, self.num_gpus = int(num_replicas), num_cpus, num_gpus
        self.address, self.init = address, dict(init or {})
        self.shard_size = int(shard_size or self.node.get("batch_size") or DEFAULT_SHARD_SIZE)
        self.batch_size = self.shard_size * self.num_replicas  # the label runner's chunk: one shard per replica
        self._replicas: list[Any] = []
        self._outstanding = [0] * self.num_replicas
        self.calls_per_replica = [0] * self.num_replicas

    def start(self) -> None:
        """Start (or join) Ray and the replicas; the first `agenerate` calls it."""
        import ray

        if self._replicas:
            return
        if not ray.is_initialized():
            ray.init(address=self.address, **self.init)  # address None: $RAY_ADDRESS, else a local instance
            _STARTED[0] = True
        _LIVE.add(id(self))
        actor = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus)(BackendReplica)
        log.info("%s: starting %d Ray replica(s) of <%s> (%s CPU, %s GPU each)", self.model, self.num_replicas,
                 self.node["_target_"], self.num_cpus, self.num_gpus)
        self._replicas = [actor.remote(self.node, self.model) for _ in range(self.num_replicas)]

    def replica_info(self) -> list[dict[str, Any]]:
        """pid, Ray node id and GPU ids of every replica (starts them and waits until they are built)."""
        import ray

        self.start()
        return ray.get([r.info.remote() for r in self._replicas])

    async def agenerate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        self.start()
        reqs = list(requests)
        shards = [reqs[i:i + self.shard_size] for i in range(0, len(reqs), self.shard_size)]
        done = await asyncio.gather(*(self._shard(s) for s in shards))
        return [r for part in done for r in part]

    async def _shard(self, shard: list[GenRequest]) -> list[GenResult]:
        i = min(range(len(self._replicas)), key=lambda k: (self._outstanding[k], k))  # picked before any await
        self._outstanding[i] += 1
        self.calls_per_replica[i] += 1
        try:
            out = await self._replicas[i].generate.remote(shard)
            if len(out) != len(shard):
                raise RuntimeError(f"replica {i} returned {len(out)} results for {len(shard)} requests")
        except Exception as e:  # noqa: BLE001 - a dead replica or a raising backend: its rows carry the error
            log.warning("%s: Ray replica %d failed: %s", self.model, i, e)
            out = [GenResult(error=f"ray replica {i}: {type(e).__name__}: {e}") for _ in shard]
        finally:
            self._outstanding[i] -= 1
        for r in out:
            r.meta = {**(r.meta or {}), "ray_replica": i}
        return out

    def close(self) -> None:
        """Close and stop the replicas; stop Ray too if it was started here and no other RayBackend runs."""
        import ray

        if self._replicas and ray.is_initialized():
            for r in self._replicas:
                try:
                    ray.get(r.close.remote(), timeout=30)
                except Exception:  # closing must not lose finished work; the actor is killed anyway
                    log.debug("closing a Ray replica failed", exc_info=True)
                ray.kill(r)
        self._replicas = []
        _LIVE.discard(id(self))
        if _STARTED[0] and not _LIVE:  # started here, and no other model's replicas still run (parallel_models)
            ray.shutdown()
            _STARTED[0] = False
