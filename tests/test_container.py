"""The container files (docker/Dockerfile, docker/compose.yaml, docker/upstreams.yaml, .dockerignore) hold what the
README promises, checked without a container runtime:

- the image: a non-root runtime user, `ENTRYPOINT ["kronaxis-serve", "bundle=/bundle", "server.host=0.0.0.0", ...]`
  whose overrides compose with the real serve config, a HEALTHCHECK on a route the app serves without a key, the
  `serve` extra installed without torch (docker/serve_requirements.py), a build context that holds every COPY source;
- the router needs none of the modules left out of the image: it loads a bundle and answers /v1/route with torch,
  transformers & co. blocked from import (a TF-IDF bundle here; the ONNX tier predictor in the slow test);
- the exact ENTRYPOINT command line, run as a subprocess the way the image runs it (a non-root uid, the bundle
  read-only, the image's ENV, bound to 0.0.0.0, keys from KRONAXIS_API_KEYS): /healthz answers without a key,
  /v1/route answers 401 without one and 200 with one; without any key it refuses to start;
- compose: the bundle mounted read-only at /bundle, the router's upstreams config (docker/upstreams.yaml, selected
  through hydra.searchpath) pointing at the upstream services by name and port, and building against a bundle of
  that fleet.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient

from kronaxis_lab.pipelines.serve import build_app
from tests.conftest import ROOT, compose, in_memory_dataset
from tests.servers.proc import free_port

tomllib = pytest.importorskip("tomllib")  # Python 3.11+, as in the image (docker/serve_requirements.py needs it)

DOCKER = ROOT / "docker"


def _load_serve_requirements():
    """docker/serve_requirements.py by path: `import docker` would find the docker SDK where it is installed."""
    spec = importlib.util.spec_from_file_location("serve_requirements", DOCKER / "serve_requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_req = _load_serve_requirements()
NOT_SERVED, distribution, serve_requirements = _req.NOT_SERVED, _req.distribution, _req.serve_requirements
EXE = Path(sys.executable).with_name("kronaxis-serve")
UPSTREAMS = yaml.safe_load((DOCKER / "upstreams.yaml").read_text())
KEY = "container-test-key-0123456789"
CHEAP_EXPORT = ["parity.n=32", "metrics.n_boot=50"]
#: the image's bundle mount, and the compose mount of docker/upstreams.yaml (a Hydra searchpath entry)
BUNDLE_MOUNT = "/bundle"


# -- the Dockerfile ---------------------------------------------------------------------------------------------
def dockerfile_stages(path: Path = DOCKER / "Dockerfile") -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per build stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")))
    stages: list[list[tuple[str, str]]] = [[]]
    for line in filter(None, (ln.strip() for ln in text.splitlines())):
        instr, _, args = line.partition(" ")
        if instr.upper() == "FROM":
            stages.append([])
        stages[-1].append((instr.upper(), args.strip()))
    return stages


STAGES = dockerfile_stages()
RUNTIME = STAGES[-1]


def instr(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [a for i, a in stage if i == name]


def stage_args(stage: list[tuple[str, str]]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in instr(stage, "ARG") if "=" in a)


def expand(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), value)


def image_env() -> dict[str, str]:
    """The runtime stage's ENV (PATH left out: the test runs this venv's script by its path)."""
    env: dict[str, str] = {}
    for line in instr(RUNTIME, "ENV"):
        env.update(tok.split("=", 1) for tok in shlex.split(line))
    env.pop("PATH", None)
    return env


def entrypoint() -> list[str]:
    (line,) = instr(RUNTIME, "ENTRYPOINT")
    return json.loads(line)


def overrides_of(argv: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("~"))


def test_runtime_stage_runs_as_a_non_root_user():
    users = instr(RUNTIME, "USER")
    assert users, "the runtime stage sets no USER: the router would run as root"
    user = expand(users[-1], stage_args(RUNTIME)).split(":")[0]
    assert user not in ("root", "0") and (not user.isdigit() or int(user) >= 1000), user
    assert not [a for i, a in RUNTIME[RUNTIME.index(("USER", users[-1])):] if i == "RUN"]  # none runs as root after


def test_entrypoint_is_kronaxis_serve_with_the_image_defaults():
    argv = entrypoint()
    assert argv[0] == "kronaxis-serve"
    assert "kronaxis-serve" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    o = overrides_of(argv[1:])
    assert o["bundle"] == BUNDLE_MOUNT and o["server.host"] == "0.0.0.0"
    assert o["hydra.run.dir"].startswith("/tmp/")  # compose mounts a tmpfs there (read-only root filesystem)
    # every override composes with the real serve config and resolves in the image's environment
    env = {**image_env(), "KRONAXIS_API_KEYS_FILE": "/run/secrets/k"}
    cfg = compose("serve", argv[1:])
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert int(cfg.server.port) == int(env["KRONAXIS_PORT"])
        assert cfg.settings.auth.keys_file == "/run/secrets/k"
        del os.environ["KRONAXIS_API_KEYS_FILE"]
        assert cfg.settings.auth.keys_file is None  # no secret file: keys from KRONAXIS_API_KEYS only
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def healthcheck_url() -> str:
    (line,) = instr(RUNTIME, "HEALTHCHECK")
    cmd = json.loads(line.split(" CMD ", 1)[1])
    url = re.search(r"'(http://127\.0\.0\.1:[^']+)'", cmd[-1]).group(1)
    return url % image_env()["KRONAXIS_PORT"]


def test_healthcheck_probes_the_serve_port_and_a_route_the_app_serves(tiny_bundle):
    url = urlsplit(healthcheck_url())
    assert url.port == int(image_env()["KRONAXIS_PORT"])
    app = build_app(compose("serve", [f"bundle={tiny_bundle}"]))
    assert url.path in {r.path for r in app.routes}  # and without a key: test_the_image_entrypoint_...


def test_the_image_installs_the_serve_extra_and_no_torch():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = serve_requirements(ROOT / "pyproject.toml")
    names = {distribution(r) for r in reqs}
    assert {distribution(r) for r in pyproject["optional-dependencies"]["serve"]} <= names
    assert not names & NOT_SERVED and "torch" in NOT_SERVED
    assert NOT_SERVED <= {distribution(r) for r in pyproject["dependencies"]}  # no stale names
    build = "\n".join(a for i, a in STAGES[1] if i == "RUN")
    assert "serve_requirements.py" in build and "pip install --no-deps -e ." in build


def test_the_build_context_holds_every_copy_source():
    """.dockerignore is an allow-list: each COPY source (not --from) must be on it, and data/outputs/.venv not."""
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*"
    allowed = {r[1:] for r in rules if r.startswith("!")}
    for stage in STAGES:
        for a in instr(stage, "COPY"):
            if a.startswith("--from"):
                continue
            *sources, _dest = a.split()
            for s in sources:
                assert s in allowed and (ROOT / s).exists(), s
    assert not allowed & {"data", "outputs", ".venv", "docker/models", "docker/secrets"}


# -- a tiny bundle whose fleet is the compose upstreams' models -------------------------------------------------
def routing_dataset(names: list[str], n: int = 120, seed: int = 0):
    """Hard queries (prove / integral) fail on the tier-0 model 90 % of the time, easy ones succeed 95 %."""
    rng = np.random.default_rng(seed)
    hard, easy = ["prove the theorem about", "compute the integral of"], ["say hello to", "what colour is"]
    things = ["cats", "primes", "rivers", "matrices", "clouds", "graphs"]
    rows, outs = [], []
    for i in range(n):
        is_hard = i % 2 == 0
        rows.append({"query_id": f"q{i}", "text": f"{rng.choice(hard if is_hard else easy)} {rng.choice(things)} {i}",
                     "task": "hard" if is_hard else "easy"})
        ok = [rng.random() < (0.1 if is_hard else 0.95), rng.random() < 0.95]
        outs += [{"query_id": f"q{i}", "model": m, "score": float(k), "input_tokens": 12, "output_tokens": 20}
                 for m, k in zip(names, ok)]
    fleet = {"models": {names[0]: {"tier": 0, "price_in": 0.1, "price_out": 1, "data_classes": ["*"]},
                        names[1]: {"tier": 1, "price_in": 0.2, "price_out": 2, "data_classes": []}}}
    q, o = pd.DataFrame(rows), pd.DataFrame(outs)

    return in_memory_dataset(q, o, fleet, "container")


def train_and_export(work: Path, classifier: list[str]) -> Path:
    from kronaxis_lab.pipelines.export import run as export_run
    from kronaxis_lab.pipelines.train import run as train_run

    data = routing_dataset(list(UPSTREAMS["models"])).save(work / "ds")
    train_run(compose("train", ["dataset=saved", f"dataset.path={data}", *classifier], work / "train"))
    return Path(export_run(compose("export", [f"run_dir={work / 'train'}", *CHEAP_EXPORT], work / "export"))
                ["bundle_dir"])


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    """TF-IDF + logistic regression (no graph: seconds to train and export)."""
    return train_and_export(tmp_path_factory.mktemp("container"),
                            ["classifier=tfidf_logreg", "classifier.show_progress=false"])


# -- the router without the modules the image leaves out --------------------------------------------------------
NO_TORCH_SERVE = """
import importlib.abc, json, os, sys
BLOCKED = set(sys.argv[2].split(","))
class NotInTheImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed in the serving image")
sys.meta_path.insert(0, NotInTheImage())
from fastapi.testclient import TestClient
from hydra import compose, initialize_config_dir
from kronaxis_lab.pipelines.common import CONFIG_DIR
from kronaxis_lab.pipelines.serve import build_app
with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
    cfg = compose("serve", overrides=[f"bundle={sys.argv[1]}", "server.host=0.0.0.0"])
with TestClient(build_app(cfg)) as client:
    r = client.post("/v1/route", headers={"Authorization": "Bearer " + os.environ["KRONAXIS_API_KEYS"]},
                    json={"messages": [{"role": "user", "content": "prove the theorem about primes"}]})
print(json.dumps({"status": r.status_code, "body": r.json(), "loaded": sorted(BLOCKED & set(sys.modules))}))
"""


def serve_without_training_stack(bundle: Path) -> dict[str, Any]:
    blocked = ",".join(sorted(d.replace("-", "_") for d in NOT_SERVED))
    proc = subprocess.run([sys.executable, "-c", NO_TORCH_SERVE, str(bundle), blocked], cwd=ROOT, timeout=300,
                          capture_output=True, text=True, env={**os.environ, "KRONAXIS_API_KEYS": KEY})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_router_serves_a_bundle_without_torch_or_the_training_stack(tiny_bundle):
    out = serve_without_training_stack(tiny_bundle)
    assert out["status"] == 200 and out["body"]["model"] in UPSTREAMS["models"] and out["loaded"] == []


@pytest.mark.slow
def test_router_serves_an_onnx_tier_predictor_without_torch(tmp_path):
    """The image's main case: an ONNX graph + a tokenizers tokenizer, no torch (a tiny random BERT, trained briefly)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from kronaxis_lab.local_models import resolve_model
    from tests.conftest import MINILM
    from tests.test_export import FAST_TRAIN

    tok = AutoTokenizer.from_pretrained(resolve_model(MINILM))
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(tmp_path / "bert")
    tok.save_pretrained(tmp_path / "bert")
    bundle = train_and_export(tmp_path, ["classifier=tier_predictor", f"classifier.base_model={tmp_path / 'bert'}",
                                         "classifier.base_model_fallback=null", *FAST_TRAIN])
    assert list(bundle.rglob("*.onnx"))
    out = serve_without_training_stack(bundle)
    assert out["status"] == 200 and out["body"]["model"] in UPSTREAMS["models"] and out["loaded"] == []


# -- the exact ENTRYPOINT command line, as the image runs it ----------------------------------------------------
def world_executable(path: Path) -> bool:
    """Whether another uid can run `path` (every parent directory traversable, the file executable by others)."""
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


@pytest.fixture
def image_like(tiny_bundle) -> Iterator[dict[str, Any]]:
    """A read-only copy of the bundle and a home dir under a world-traversable temp dir; as root, the image's
    unprivileged case is reproduced with uid/gid 65534 (nobody), which then cannot write the bundle either (where
    nobody may run this interpreter: a pyenv Python under /root is not)."""
    base = Path(tempfile.mkdtemp(prefix="kronaxis-container-"))
    os.chmod(base, 0o755)
    bundle, home = base / "bundle", base / "home"
    shutil.copytree(tiny_bundle, bundle)
    home.mkdir()
    ids: dict[str, Any] = {}
    if os.geteuid() == 0 and world_executable(Path(sys.executable).resolve()):
        ids = {"user": 65534, "group": 65534, "extra_groups": []}
        os.chown(home, 65534, 65534)
    for p in [bundle, *bundle.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        yield {"bundle": bundle, "home": home, "ids": ids}
    finally:
        for p in [bundle, *bundle.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
        shutil.rmtree(base, ignore_errors=True)


def entrypoint_command(bundle: Path, home: Path) -> list[str]:
    """The image's ENTRYPOINT with only the two container paths moved: /bundle and the /tmp run dir."""
    argv = entrypoint()
    moved = {f"bundle={BUNDLE_MOUNT}": f"bundle={bundle}",
             f"hydra.run.dir={overrides_of(argv)['hydra.run.dir']}": f"hydra.run.dir={home / 'run'}"}
    return [str(EXE), *(moved.get(a, a) for a in argv[1:])]


def start(cmd: list[str], env: dict[str, str], home: Path, ids: dict[str, Any]) -> subprocess.Popen:
    full_env = {"PATH": os.environ["PATH"], "HOME": str(home), **image_env(), **env}
    return subprocess.Popen(cmd, cwd=home, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, **ids)


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # what `docker stop` sends
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.communicate()[0] or ""


def test_the_image_entrypoint_serves_behind_keys(image_like):
    port = free_port()
    cmd = entrypoint_command(image_like["bundle"], image_like["home"])
    proc = start(cmd, {"KRONAXIS_PORT": str(port), "KRONAXIS_API_KEYS": KEY}, image_like["home"], image_like["ids"])
    url, log = f"http://127.0.0.1:{port}", ""
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, stop(proc)
            try:
                health = httpx.get(url + urlsplit(healthcheck_url()).path, timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "not listening after 120 s"
                time.sleep(0.3)
        assert health.status_code == 200 and health.json() == {"status": "ok"}  # open probe, no details
        body = {"messages": [{"role": "user", "content": "prove the theorem about primes"}]}
        assert httpx.post(url + "/v1/route", json=body, timeout=30).status_code == 401
        assert httpx.post(url + "/v1/route", json=body, timeout=30,
                          headers={"Authorization": "Bearer not-the-key-0123456789"}).status_code == 401
        r = httpx.post(url + "/v1/route", json=body, timeout=30, headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and r.json()["model"] in UPSTREAMS["models"]
    finally:
        log = stop(proc)
    assert f"listening on http://0.0.0.0:{port}" in log
    assert not (image_like["home"] / "run" / "serve.log").exists()  # logs go to stdout only


def test_the_image_entrypoint_refuses_to_start_without_keys(image_like):
    cmd = entrypoint_command(image_like["bundle"], image_like["home"])
    proc = start(cmd, {"KRONAXIS_PORT": str(free_port())}, image_like["home"], image_like["ids"])
    try:
        proc.wait(120)
    finally:
        out = stop(proc)
    assert proc.returncode != 0 and "no router API key is configured" in out


# -- compose ----------------------------------------------------------------------------------------------------
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
ROUTER = COMPOSE["services"]["router"]


def mount(service: dict[str, Any], target: str) -> dict[str, Any]:
    (m,) = [v for v in service["volumes"] if v["target"] == target]
    return m


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def upstreams_mount() -> tuple[str, str]:
    """(searchpath dir, config name) of the upstreams config the router's command selects."""
    o = overrides_of(ROUTER["command"])
    (searchpath,) = re.fullmatch(r"\[file://(/[^\]]+)\]", o["hydra.searchpath"]).groups()
    return searchpath, o["upstreams"]


def test_compose_builds_the_image_and_mounts_the_bundle_read_only():
    assert (DOCKER / ROUTER["build"]["context"] / ROUTER["build"]["dockerfile"]).resolve() == DOCKER / "Dockerfile"
    bundle = mount(ROUTER, BUNDLE_MOUNT)
    assert bundle["type"] == "bind" and bundle.get("read_only") is True
    assert ROUTER["read_only"] is True and overrides_of(entrypoint())["hydra.run.dir"].startswith(ROUTER["tmpfs"][0])
    assert ROUTER["cap_drop"] == ["ALL"] and "no-new-privileges:true" in ROUTER["security_opt"]
    (secret,) = ROUTER["secrets"]
    assert ROUTER["environment"]["KRONAXIS_API_KEYS_FILE"] == f"/run/secrets/{secret}" and secret in COMPOSE["secrets"]
    assert ROUTER["ports"][0].endswith(f":{image_env()['KRONAXIS_PORT']}")


def test_compose_upstreams_point_at_the_upstream_services():
    searchpath, name = upstreams_mount()
    m = mount(ROUTER, f"{searchpath}/upstreams/{name}.yaml")
    assert (DOCKER / m["source"]).resolve() == DOCKER / "upstreams.yaml" and m.get("read_only") is True
    services = COMPOSE["services"]
    for spec in UPSTREAMS["models"].values():
        for ep in spec["endpoints"]:
            url = urlsplit(ep["base_url"])
            assert url.hostname in services and url.hostname != "router", ep
            command = services[url.hostname]["command"]
            assert int(flag(command, "--port")) == url.port and flag(command, "--alias") == ep["model"]
            assert ROUTER["depends_on"][url.hostname]["condition"] == "service_healthy"
            assert services[url.hostname]["healthcheck"]["test"][-1].endswith(f":{url.port}/health")
            source = mount(services[url.hostname], flag(command, "-m").rsplit("/", 1)[0])
            assert source.get("read_only") is True


def test_compose_upstreams_config_builds_against_a_bundle_of_its_fleet(tiny_bundle, tmp_path):
    """The router's compose command selects docker/upstreams.yaml (mounted as <searchpath>/upstreams/<name>.yaml)
    and the app builds: every upstream model is in the bundle's fleet (else kronaxis-serve refuses to start)."""
    searchpath, name = upstreams_mount()
    conf = tmp_path / "conf" / "upstreams"
    conf.mkdir(parents=True)
    shutil.copy(DOCKER / "upstreams.yaml", conf / f"{name}.yaml")
    command = [a.replace(f"file://{searchpath}", f"file://{tmp_path / 'conf'}") for a in ROUTER["command"]]
    with TestClient(build_app(compose("serve", [f"bundle={tiny_bundle}", *command]))) as client:
        models = {m["id"] for m in client.get("/v1/models").json()["data"]}
    assert set(UPSTREAMS["models"]) <= models
