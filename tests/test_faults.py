"""Faults: killed runs, killed sweep drivers, foreign databases, failed sweeps, internal errors,
and bootstrap intervals that must hold their estimate."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from memlaw.atomic import STAGING_TAG, remove_stale_staging
from memlaw.errors import MemlawError
from tests.test_hostile_inputs import run_in_process

# --- SIGKILL of train while it saves --------------------------------------------------------

DIE_WHILE_SAVING = textwrap.dedent(
    """
    import os, signal, sys
    import memlaw.atomic, memlaw.train
    real = memlaw.atomic.atomic_write_dir

    def dying(path, fill, *, overwrite):
        def fill_then_die(staging):
            fill(staging)
            (staging / "record.json").write_text('{"steps": ')  # half a record
            os.kill(os.getpid(), signal.SIGKILL)
        real(path, fill_then_die, overwrite=overwrite)

    memlaw.train.atomic_write_dir = dying
    from memlaw.cli import main
    sys.argv = ["memlaw", *sys.argv[1:]]
    main()
    """
)
TRAIN_ARGS = ["train", "-m", "tiny", "-g", "phonebook:2", "--steps", "2", "--method", "sft"]


def test_train_killed_while_saving_then_rerun_leaves_a_clean_output(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, "-c", DIE_WHILE_SAVING, *TRAIN_ARGS, "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    leftovers = [p for p in tmp_path.iterdir() if STAGING_TAG in p.name]
    assert leftovers and not out.exists()  # killed mid-save: only staging was written
    assert (leftovers[0] / "record.json").read_text() == '{"steps": '

    code, _, err = run_in_process([*TRAIN_ARGS, "-o", out], capsys, monkeypatch)
    assert code == 0, err
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # the leftovers are gone
    assert json.loads((out / "record.json").read_text())["steps"] == 2
    assert (out / "adapter_model.safetensors").stat().st_size > 0


def test_stale_staging_is_removed_and_live_staging_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".run.{STAGING_TAG}.{dead.pid}.abc"
    live = tmp_path / f".run.{STAGING_TAG}.{os.getpid()}.def"
    other = tmp_path / f".runner.{STAGING_TAG}.{dead.pid}.ghi"  # another output's
    stale.mkdir()
    live.mkdir()
    other.mkdir()
    (tmp_path / ".run.backup").write_text("the user's own file")
    assert remove_stale_staging(tmp_path / "run") == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, other.name, ".run.backup"]
    )


# --- SIGKILL of a sweep driver --------------------------------------------------------------


def _session_processes(session: int) -> dict[int, str]:
    """pid → command line of every process in ``session``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) != session:
                continue
            found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ProcessLookupError):
            continue
    return found


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def _wait_for_started_workers(driver: subprocess.Popen, count: int, timeout: float) -> list[int]:
    """The driver's worker pids once ``count`` of them have run their start-up (a worker is
    single-threaded until its initializer starts the thread that watches the driver)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert driver.poll() is None, driver.stderr.read()
        workers = [
            pid
            for pid, cmd in _session_processes(driver.pid).items()
            if "spawn_main" in cmd and pid != driver.pid
        ]
        if len([pid for pid in workers if _threads(pid) >= 2]) >= count:
            return workers
        time.sleep(0.2)
    raise AssertionError("the sweep's workers never started")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sweep_workers_die_with_a_killed_driver(tmp_path):
    args = ["sweep", "-m", "tiny", "--ranks", "1,2", "--lengths", "64", "--workers", "2"]
    args += ["--max-steps", "1000000", "--plateau-window", "1000000", "--train-past-certified"]
    driver = subprocess.Popen(
        [sys.executable, "-m", "memlaw.cli", *args, "--db", str(tmp_path / "s.db")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its session id finds every process it started
    )
    session = driver.pid
    try:
        _wait_for_started_workers(driver, count=2, timeout=600)
        time.sleep(1)  # into their first point
        assert any("resource_tracker" in cmd for cmd in _session_processes(session).values())
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 10
        while _session_processes(session) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _session_processes(session) == {}
    finally:
        for pid in _session_processes(session):
            os.kill(pid, signal.SIGKILL)  # only what this test started


# --- inputs that must not change ------------------------------------------------------------


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "command",
    [
        ["fit", "--db", "{db}", "-o", "{dir}/law.json"],
        ["report", "--db", "{db}", "-o", "{dir}/report.html"],
        ["sweep", "-m", "tiny", "--ranks", "1", "--lengths", "8", "--db", "{db}"],
    ],
    ids=["fit", "report", "sweep"],
)
def test_a_foreign_sqlite_file_stays_byte_identical(command, tmp_path, capsys, monkeypatch):
    db = tmp_path / "crm.sqlite"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
        connection.execute("INSERT INTO customers VALUES (1, 'Ada')")
    connection.close()
    before, listing = _digest(db), sorted(os.listdir(tmp_path))
    args = [a.replace("{db}", str(db)).replace("{dir}", str(tmp_path)) for a in command]
    code, _, err = run_in_process(args, capsys, monkeypatch)
    assert code == 2 and "not a memlaw sweep" in err
    assert _digest(db) == before
    assert sorted(os.listdir(tmp_path)) == listing  # no -wal, -shm or journal beside it


# --- a sweep that fails before any point finished --------------------------------------------


class _FailingRunner:
    def run(self, spec, points):
        raise MemlawError("the first point failed")
        yield  # a generator, like the real executors


def test_a_failed_first_sweep_leaves_no_database(tmp_path):
    from memlaw.sweep import SweepSpec, sweep_into

    spec = SweepSpec(model="tiny", ranks=(1,), lengths=(8,), max_steps=2)
    db = tmp_path / "s.db"
    with pytest.raises(MemlawError, match="first point failed"):
        sweep_into(db, spec, _FailingRunner())
    assert os.listdir(tmp_path) == []


def test_a_failed_sweep_keeps_a_database_it_did_not_create(tmp_path):
    from memlaw.sweep import SweepSpec, SweepStore, sweep_into

    spec = SweepSpec(model="tiny", ranks=(1,), lengths=(8,), max_steps=2)
    db = tmp_path / "s.db"
    SweepStore(db, spec).close()
    with pytest.raises(MemlawError):
        sweep_into(db, spec, _FailingRunner())
    assert db.is_file()


# --- an internal error is a bug, and says so -------------------------------------------------


def test_an_unexpected_error_shows_a_bug_line_and_its_traceback(capsys, monkeypatch):
    import memlaw.models

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in memlaw")

    monkeypatch.setattr(memlaw.models, "load_model", broken)
    code, _, err = run_in_process(["probe", "-m", "tiny", "-g", "phonebook:2"], capsys, monkeypatch)
    assert code == 1
    assert "this is a bug" in err.splitlines()[0]
    assert "Traceback" in err and "ZeroDivisionError: a bug in memlaw" in err


def test_library_warnings_wait_for_success(capsys, monkeypatch):
    import memlaw.cli

    def warn_then_fail(*args, **kwargs):
        warnings.warn("library noise", UserWarning, stacklevel=1)
        raise MemlawError("the real problem")

    monkeypatch.setattr(memlaw.cli, "load", warn_then_fail)
    code, _, err = run_in_process(["probe", "-m", "tiny", "-g", "phonebook:2"], capsys, monkeypatch)
    assert code == 2 and err == "error: the real problem\n"


# --- bootstrap intervals ---------------------------------------------------------------------


def _noisy_points(seed: int = 3):
    from memlaw.law import LawPoint

    rng = np.random.default_rng(seed)
    return [
        LawPoint(r, n, 2.0 * r**0.4 * n**-0.5 * float(np.exp(rng.normal(0, 0.15))), rank=r)
        for r in (1, 2, 4, 8)
        for n in (16, 32, 64)
    ]


@pytest.mark.parametrize("n_bootstrap", [3, 5, 8])
def test_few_refits_give_flagged_intervals_that_hold_the_estimate(n_bootstrap):
    from memlaw.law import MemoryLaw

    with pytest.warns(UserWarning, match="cannot be trusted"):
        law = MemoryLaw("no-offset", n_bootstrap=n_bootstrap, seed=1).fit(_noisy_points())
    assert law.intervals_trusted_ is False
    assert 0 < law.n_bootstrap_ok_ <= n_bootstrap
    assert MemoryLaw.from_dict(law.to_dict()).intervals_trusted_ is False  # the flag is kept
    for name in ("C", "alpha", "beta"):
        low, high = law.intervals_[name]
        assert low <= getattr(law, f"{name}_") <= high


def test_enough_refits_give_trusted_intervals():
    from memlaw.law import MemoryLaw

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "cannot be trusted" warning
        law = MemoryLaw("no-offset", n_bootstrap=40, seed=1).fit(_noisy_points())
    assert law.intervals_trusted_ is True and law.n_bootstrap_ok_ >= 20
    assert MemoryLaw.from_dict(law.to_dict()).intervals_trusted_ is True
    low, high = law.intervals_["alpha"]
    assert low <= law.alpha_ <= high and low < high
