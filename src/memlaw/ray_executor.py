"""Run a sweep's points as Ray tasks: on a Ray instance started here, or on a cluster.

Each point is one Ray task that calls :func:`memlaw.sweep.run_point` and returns its row; the
driver writes every row to the sweep's SQLite store as it arrives, exactly as with
:class:`memlaw.sweep.LocalExecutor`, so a sweep stays resumable (finished points are skipped)
and the store lives on the driver's disk only. A point asks Ray for one GPU when the sweep
trains on ``cuda`` and for ``cpus_per_point`` CPUs otherwise.

Ray is optional (``pip install 'memlaw[ray]'``) and imported only here. On the command line::

    memlaw sweep --model tiny --ranks 1,2 --lengths 16,32 --executor ray           # local Ray
    memlaw sweep --device cuda --dtype bfloat16 --executor ray --address HEAD:6379  # a cluster

In Python (the executor connects for the sweep and disconnects after it; a Ray the caller
started stays up)::

    from memlaw.ray_executor import RayExecutor
    from memlaw.sweep import SweepSpec, SweepStore, run_sweep

    spec = SweepSpec(model="tiny", ranks=(1, 2), lengths=(16, 32), max_steps=50)
    run_sweep(spec, SweepStore("tiny.db", spec), RayExecutor())

Every node of a cluster needs memlaw (and the model's files) installed; ``runtime_env`` is
passed to ``ray.init`` for what the nodes need beyond that (environment variables, say).
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType

from memlaw.errors import MemlawError, first_line
from memlaw.sweep import SweepPoint, SweepSpec, _init_worker, run_point

# No square brackets: the command line prints errors with rich, which reads [...] as markup.
INSTALL_HINT = "pip install 'ray>=2.9' (memlaw's extra named ray)"


def import_ray() -> ModuleType:
    """The ``ray`` module, or a one-line MemlawError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise MemlawError(
            f"the ray executor needs Ray, which is not installed: {INSTALL_HINT}"
        ) from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A quick TCP connect to ``HOST:PORT`` (or ``ray://HOST:PORT``): Ray itself retries a
    wrong address for minutes, logging as it goes, before it gives up."""
    rest = address.split("://", 1)[-1]
    host, colon, port = rest.rpartition(":")
    if not colon or not port.isdigit():
        return  # "auto" and the like: Ray finds the cluster and says so if there is none
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise MemlawError(
            f"cannot reach Ray at '{address}' ({exc.strerror or exc}): is the cluster up?"
        ) from None


def _run_point_task(spec: SweepSpec, point: SweepPoint, threads: int) -> dict:
    """The body of each Ray task (a module-level function, so workers import it by name)."""
    _init_worker(threads)
    return run_point(spec, point)


@dataclass
class RayExecutor:
    """Sweep points as Ray tasks (see the module's docstring).

    ``address``: a Ray cluster (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``); None starts a
    private local Ray instance for the sweep and shuts it down afterwards. ``workers`` caps the
    points in flight (None: as many as the cluster's CPUs or GPUs fit). ``cpus_per_point`` is
    each task's CPU request and its torch thread count; ``gpus_per_point`` defaults to 1 on
    ``cuda`` and 0 on ``cpu``. ``local_cpus`` sizes a local instance (None: every core).
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_point: float = 1.0
    gpus_per_point: float | None = None
    local_cpus: int | None = None
    runtime_env: dict | None = None
    on_start: Callable[[SweepPoint], None] | None = None
    _ray: object = field(default=None, init=False, repr=False)
    _owns_connection: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        import_ray()  # fail before anything is written when Ray is missing
        if self.workers is not None and self.workers <= 0:
            raise MemlawError(f"workers must be positive, got {self.workers}")
        if self.cpus_per_point <= 0:
            raise MemlawError(f"cpus per point must be positive, got {self.cpus_per_point}")
        if self.gpus_per_point is not None and self.gpus_per_point < 0:
            raise MemlawError(f"gpus per point must be ≥ 0, got {self.gpus_per_point}")

    # --- connection --------------------------------------------------------------------------

    def connect(self) -> RayExecutor:
        """Join the Ray the caller started, or connect to ``address``, or start a local one."""
        if self._ray is not None:
            return self
        ray = import_ray()
        if ray.is_initialized():  # the caller's Ray: use it, leave it running
            self._ray, self._owns_connection = ray, False
            return self
        quiet = {
            "log_to_driver": False,  # workers' library noise stays in Ray's log files
            "logging_level": logging.ERROR,
            "runtime_env": self.runtime_env,
        }
        try:
            if self.address is None:
                # "local" always starts a fresh instance, never joins one found on the machine.
                ray.init(
                    address="local",
                    num_cpus=self.local_cpus,
                    include_dashboard=False,
                    **quiet,
                )
            else:
                _check_reachable(self.address)
                ray.init(address=self.address, **quiet)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = f"at '{self.address}'" if self.address else "locally"
            raise MemlawError(f"cannot start or reach Ray {where}: {first_line(exc)}") from None
        self._ray, self._owns_connection = ray, True
        return self

    def close(self) -> None:
        """Shut down what :meth:`connect` started (a local instance, or this driver's
        connection to a cluster); a Ray the caller started stays up."""
        if self._ray is not None and self._owns_connection:
            self._ray.shutdown()
        self._ray, self._owns_connection = None, False

    def __enter__(self) -> RayExecutor:
        return self.connect()

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- resources ---------------------------------------------------------------------------

    def _gpus(self, spec: SweepSpec) -> float:
        if self.gpus_per_point is not None:
            return self.gpus_per_point
        return 1.0 if spec.device.startswith("cuda") else 0.0

    def check(self, spec: SweepSpec) -> None:
        """Fail with one line if the cluster cannot run this sweep's points (connects first)."""
        # Ray limits each task's CUDA_VISIBLE_DEVICES to the GPU it was given, which is then
        # "cuda" inside the task: a fixed cuda:N would point elsewhere or nowhere.
        if ":" in spec.device:
            raise MemlawError(
                f"with the ray executor use --device cuda, not '{spec.device}': "
                "Ray gives each point its own GPU"
            )
        self.connect()
        resources = self._ray.cluster_resources()
        gpus = self._gpus(spec)
        if spec.device == "cuda" and gpus <= 0:
            raise MemlawError("a sweep on cuda needs gpus_per_point > 0 with the ray executor")
        if gpus > 0 and resources.get("GPU", 0) < gpus:
            raise MemlawError(
                f"the sweep trains on {spec.device} but the Ray cluster has "
                f"{resources.get('GPU', 0):g} GPU(s): use --device cpu or a cluster with GPUs"
            )
        if gpus == 0 and resources.get("CPU", 0) < self.cpus_per_point:
            raise MemlawError(
                f"each point asks for {self.cpus_per_point:g} CPU(s) but the Ray cluster has "
                f"{resources.get('CPU', 0):g}"
            )

    def _slots(self, spec: SweepSpec) -> int:
        """Points the cluster can run at once now (so on_start fires when a point starts,
        not when it queues); re-read each time, as an autoscaling cluster grows."""
        resources = self._ray.cluster_resources()
        gpus = self._gpus(spec)
        fit = (
            resources.get("GPU", 0) / gpus
            if gpus > 0
            else resources.get("CPU", 0) / self.cpus_per_point
        )
        slots = max(1, math.floor(fit + 1e-9))
        return min(slots, self.workers) if self.workers else slots

    # --- the executor protocol ---------------------------------------------------------------

    def run(self, spec: SweepSpec, points: list[SweepPoint]) -> Iterator[tuple[SweepPoint, dict]]:
        """Submit the points as Ray tasks and yield ``(point, row)`` as each finishes."""
        opened_here = self._ray is None
        self.connect()
        ray = self._ray
        running: dict = {}
        try:
            self.check(spec)
            task = ray.remote(_run_point_task).options(
                num_cpus=self.cpus_per_point,
                num_gpus=self._gpus(spec),
                max_retries=1,  # a lost node reruns its point once; a failing point is not retried
            )
            threads = max(1, int(self.cpus_per_point))
            queue = list(points)
            while queue or running:
                slots = self._slots(spec) if queue else 0
                while queue and len(running) < slots:
                    point = queue.pop(0)
                    running[task.remote(spec, point, threads)] = point
                    if self.on_start:
                        self.on_start(point)
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    point = running.pop(ref)
                    yield point, self._result(ref, point)
        finally:
            for ref in running:  # a failure or an interrupt: nothing is left running for us
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # already finished or gone with the cluster
                    pass
            if opened_here:
                self.close()

    def _result(self, ref, point: SweepPoint) -> dict:
        """The task's row; a MemlawError inside the task comes back as the same one line."""
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, MemlawError):
                raise MemlawError(str(cause)) from None
            raise
        except ray.exceptions.RayError as exc:  # a dead worker or node, twice
            raise MemlawError(f"Ray lost point {point.key}: {first_line(exc)}") from None
