"""`kronaxis-serve server.workers=N`: the per-worker config and what N > 1 refuses (the processes themselves:
test_serve_e2e.test_two_worker_processes_serve_one_port_and_one_metrics_view)."""

import pytest

from kronaxis_lab.pipelines.serve import per_worker, workers_of
from kronaxis_lab.serving.settings import ServeConfigError, ServeSettings
from tests.conftest import compose


def serve_cfg(tmp_path, *overrides):
    return compose("serve", ["bundle=/nonexistent", *overrides], tmp_path)


@pytest.mark.parametrize("n", [2, 3, 7])
def test_each_worker_gets_its_share_of_the_rate_limit_never_more_than_the_total(tmp_path, n):
    cfg = serve_cfg(tmp_path, f"server.workers={n}", "settings.auth.rate_limit.requests_per_minute=600",
                    "settings.auth.rate_limit.burst=60")
    assert workers_of(cfg) == n
    rl = ServeSettings.from_config(per_worker(cfg, n).settings).auth.rate_limit
    assert rl.requests_per_minute * n == pytest.approx(600)
    assert rl.burst * n <= 60 and rl.burst >= 1
    assert cfg.settings.auth.rate_limit.burst == 60  # the caller's config is not changed


def test_unlimited_stays_unlimited_and_one_worker_is_the_default(tmp_path):
    cfg = serve_cfg(tmp_path, "server.workers=4", "settings.auth.rate_limit.requests_per_minute=null")
    assert ServeSettings.from_config(per_worker(cfg, 4).settings).auth.rate_limit.requests_per_minute is None
    assert workers_of(serve_cfg(tmp_path)) == 1


@pytest.mark.parametrize("bad", ["0", "-1", "1.5", "two", "true"])
def test_bad_worker_counts_are_refused_by_name(tmp_path, bad):
    with pytest.raises(ServeConfigError, match=r"server\.workers must be an integer ≥ 1"):
        workers_of(serve_cfg(tmp_path, f"server.workers={bad}"))


def test_a_decision_log_needs_one_writer(tmp_path):
    cfg = serve_cfg(tmp_path, "server.workers=2", f"decision_log.path={tmp_path / 'log'}")
    with pytest.raises(ServeConfigError, match=r"decision_log\.path with server\.workers=2.*one writer"):
        workers_of(cfg)
    assert workers_of(serve_cfg(tmp_path, "server.workers=1", f"decision_log.path={tmp_path / 'log'}")) == 1
