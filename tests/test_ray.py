"""The Ray executor: same rows as the local executor, resumable, and a clear error without Ray.

The sweeps here run on a local Ray instance (2 CPUs, no dashboard) with points that cannot
stop early (the plateau window exceeds the step cap), so both executors train every point for
exactly the same steps from the same seeds; on one machine, with one torch thread per point
on both sides, the rows agree to float precision (measured: bit for bit), and the test allows
a relative 1e-6.
"""

import logging
import sys

import pytest
from rich.console import Console

import memlaw.cli as memlaw_cli
from memlaw.errors import MemlawError
from memlaw.sweep import LocalExecutor, SweepSpec, SweepStore, run_sweep
from tests.test_cli import memlaw

GRID = {"ranks": (1, 2), "lengths": (16, 32)}
STEPS = 10
NUMBERS = ("base_loss", "final_loss", "delta_loss", "exact_match", "certified_share")
EXACT = ("key", "rank", "length", "layers", "method", "seed", "n_eff", "trainable_params")
EXACT += ("steps", "stop_reason", "hit_cap")


def spec(**changes) -> SweepSpec:
    settings = dict(model="tiny", max_steps=STEPS, plateau_window=1000, **GRID)
    return SweepSpec(**(settings | changes))


def assert_same_rows(got: list[dict], want: list[dict]) -> float:
    """Same keys and settings exactly, same numbers within 1e-6 (relative); returns the
    largest absolute difference seen."""
    assert [r["key"] for r in got] == [r["key"] for r in want]
    worst = 0.0
    for a, b in zip(got, want, strict=True):
        assert {k: a[k] for k in EXACT} == {k: b[k] for k in EXACT}
        pairs = [(a[k], b[k]) for k in NUMBERS]
        pairs += zip(a["record"]["losses"], b["record"]["losses"], strict=True)
        pairs += zip(a["record"]["probabilities"], b["record"]["probabilities"], strict=True)
        for x, y in pairs:
            assert x == pytest.approx(y, rel=1e-6, abs=1e-9), a["key"]
            worst = max(worst, abs(x - y))
    return worst


def test_ray_sweep_on_the_command_line_matches_local_and_resumes(tmp_path, capsys, monkeypatch):
    ray = pytest.importorskip("ray")
    from memlaw import sweep
    from memlaw.ray_executor import RayExecutor

    local_store = SweepStore(tmp_path / "local.db", spec())
    run_sweep(spec(), local_store, LocalExecutor(workers=2), progress=False)

    started = []  # the progress bar's on_start, seen through the real CLI
    original = sweep._SweepProgress.started

    def record(self, point):
        started.append(point.key)
        original(self, point)

    monkeypatch.setattr(sweep._SweepProgress, "started", record)
    # The CLI draws the sweep's bar on a terminal only (elsewhere it would print its last
    # state before an error line): pretend to be one.
    monkeypatch.setattr(memlaw_cli, "err_console", Console(stderr=True, force_terminal=True))
    code, out, err = memlaw(
        capsys,
        monkeypatch,
        "sweep",
        "-m",
        "tiny",
        "--ranks",
        "1,2",
        "--lengths",
        "16,32",
        "--max-steps",
        STEPS,
        "--plateau-window",
        1000,
        "--anneal-patience",  # a constant rate, as spec() (SweepSpec's library default)
        0,
        "--db",
        tmp_path / "ray.db",
        "--executor",
        "ray",
    )
    assert code == 0, err
    assert "4 points run, 0 already done" in out
    assert sorted(started) == sorted(p.key for p in spec().points())
    assert not ray.is_initialized()  # the local Ray the command started is shut down

    ray_store = SweepStore(tmp_path / "ray.db", spec())
    worst = assert_same_rows(ray_store.rows(with_record=True), local_store.rows(with_record=True))
    print(f"largest |ray - local| difference: {worst:.3g}")

    # Resuming skips every finished point without even starting Ray.
    again = run_sweep(spec(), ray_store, RayExecutor(), progress=False)
    assert again == {"total": 4, "skipped": 4, "done": 0}
    assert not ray.is_initialized()


@pytest.fixture
def callers_ray():
    """A Ray the caller started (no GPU): the executor must use it and leave it running."""
    ray = pytest.importorskip("ray")
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    yield ray
    ray.shutdown()


def test_the_callers_ray_is_used_left_running_and_checked(tmp_path, callers_ray):
    from memlaw.ray_executor import RayExecutor

    small = spec(ranks=(1,), lengths=(16,), max_steps=3)
    started = []
    executor = RayExecutor(on_start=lambda point: started.append(point.key))
    summary = run_sweep(small, SweepStore(tmp_path / "s.db", small), executor, progress=False)
    assert summary["done"] == 1 and started == ["r1-l16-n1-sft-s0"]
    assert callers_ray.is_initialized()

    with pytest.raises(MemlawError, match=r"trains on cuda but the Ray cluster has 0 GPU"):
        RayExecutor().check(spec(device="cuda"))
    with pytest.raises(MemlawError, match="use --device cuda, not 'cuda:1'"):
        RayExecutor().check(spec(device="cuda:1"))
    # A point that fails inside its task comes back as the same one-line error.
    broken = spec(model=str(tmp_path / "no-such-model"), ranks=(1,), lengths=(16,))
    with pytest.raises(MemlawError, match="does not exist") as failure:
        run_sweep(broken, SweepStore(tmp_path / "b.db", broken), RayExecutor(), progress=False)
    assert "\n" not in str(failure.value)
    assert callers_ray.is_initialized()


def test_without_ray_the_error_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    from memlaw.ray_executor import RayExecutor

    with pytest.raises(
        MemlawError, match=r"needs Ray, which is not installed: pip install 'ray>=2.9'"
    ):
        RayExecutor()
    db = tmp_path / "s.db"
    code, _, err = memlaw(
        capsys, monkeypatch, "sweep", "-m", "tiny", "--db", db, "--executor", "ray"
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "needs Ray, which is not installed: pip install 'ray>=2.9'" in err
    assert not db.exists()  # nothing recorded for a sweep that could not run


@pytest.mark.parametrize(
    "args, message",
    [
        (("--executor", "dask"), "unknown --executor 'dask'"),
        (("--address", "auto"), "--address is for the ray executor"),
        (("--executor", "ray", "--workers", "0"), "--workers must be positive"),
    ],
)
def test_bad_executor_options(tmp_path, capsys, monkeypatch, args, message):
    db = tmp_path / "s.db"
    code, _, err = memlaw(capsys, monkeypatch, "sweep", "-m", "tiny", "--db", db, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert message in err and not db.exists()


def test_an_unreachable_cluster_is_one_line_fast(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray")
    db = tmp_path / "s.db"
    args = ("sweep", "-m", "tiny", "--db", db, "--executor", "ray", "--address", "127.0.0.1:1")
    code, _, err = memlaw(capsys, monkeypatch, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "cannot reach Ray at '127.0.0.1:1'" in err and not db.exists()
