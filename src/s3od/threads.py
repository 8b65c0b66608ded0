"""How many CPU threads a forward pass gets: one policy for the library, CLI, server, demo and
Ray actors.

Why this exists: PyTorch sizes its intra-op pool from the cores it can see (the affinity mask),
not from a container's CPU quota, and its OpenMP threads spin at the end of every parallel
region. A network made of many small operations therefore collapses when it has fewer real
CPUs than threads: one other busy process on a 2-core machine made s3od-lite 7-10x slower
(issue 24). The policy below sizes the pool from the CPUs this process may actually use, shared
equally between the model copies that run at once, and lets an explicit setting win.

The readings (affinity, cgroup v2 ``cpu.max``, cgroup v1 ``cpu.cfs_quota_us`` /
``cpu.cfs_period_us``) take their file locations as arguments, so tests fake them with files.
This module never imports torch or onnxruntime.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROC_SELF_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: Where a cgroup v1 hierarchy with the ``cpu`` controller is usually mounted.
CGROUP_V1_CPU_DIRS = ("cpu,cpuacct", "cpu", "cpuacct,cpu")

#: Set by :func:`quiet_openmp` before torch loads, where s3od owns the process (CLI, Ray
#: actors). torch's CPU wheels use GNU OpenMP (``torch.__config__.parallel_info()``), which
#: reads ``OMP_WAIT_POLICY``; ``KMP_BLOCKTIME`` is Intel OpenMP's and is ignored by it, but
#: costs nothing and covers builds linked against Intel's runtime.
QUIET_OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
#: Any of these set by the user means they chose how OpenMP waits: :func:`quiet_openmp` then
#: sets nothing (``GOMP_SPINCOUNT`` overrides ``OMP_WAIT_POLICY`` in GNU OpenMP).
USER_OPENMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
#: The ONNX Runtime session entry that lets idle intra-op threads spin ("1") or not ("0").
ORT_SPIN_KEY = "session.intra_op.allow_spinning"


@dataclass(frozen=True)
class CpuBudget:
    """The CPUs this process may use and where that number came from.

    Attributes:
        affinity: CPUs in the scheduler affinity mask (``taskset``, Kubernetes static CPU
            manager, cpusets).
        quota: CPUs' worth of time the cgroup grants per period (``docker --cpus``, a
            Kubernetes CPU limit); ``None`` when unlimited or unreadable.
    """

    affinity: int
    quota: float | None = None

    @property
    def cpus(self) -> float:
        """The binding limit: the affinity mask, or the quota when it is smaller."""
        return float(self.affinity) if self.quota is None else min(float(self.affinity),
                                                                   self.quota)

    def describe(self) -> str:
        if self.quota is not None and self.quota < self.affinity:
            return f"cgroup quota {self.quota:g} CPUs of {self.affinity}"
        return f"{self.affinity} CPUs"


@dataclass(frozen=True)
class ThreadChoice:
    """What the policy settled on: ``threads`` per forward pass, and why (for banners)."""

    threads: int
    reason: str

    def describe(self) -> str:
        return f"{self.threads} thread{'s' if self.threads != 1 else ''} ({self.reason})"


def affinity_cpus(getter: Callable[[int], set[int]] | None = None) -> int:
    """CPUs in this process's affinity mask (``os.cpu_count()`` where Linux's call is absent)."""
    getter = getter or getattr(os, "sched_getaffinity", None)
    if getter is not None:
        try:
            return max(1, len(getter(0)))
        except OSError:
            pass
    return max(1, os.cpu_count() or 1)


def _cgroup_lines(proc_cgroup: Path) -> list[tuple[str, str]]:
    """``(controllers, path)`` of each line of /proc/self/cgroup (``""`` on the v2 line)."""
    try:
        text = proc_cgroup.read_text()
    except OSError:
        return []
    lines = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            lines.append((parts[1], parts[2]))
    return lines


def _ancestors(mount: Path, path: str) -> list[Path]:
    """The cgroup folder of ``path`` under ``mount`` and each parent up to the mount.

    Limits nest (a parent's quota binds its children), so every level is read. Inside a
    container without a cgroup namespace, /proc/self/cgroup shows the host's path, which does
    not exist under the container's mount: the mount itself is then this process's cgroup.
    """
    leaf = mount / path.strip("/") if path.strip("/") else mount
    if not leaf.is_dir():
        return [mount]
    folders = [leaf]
    while folders[-1] != mount and mount in folders[-1].parents:
        folders.append(folders[-1].parent)
    return folders


def _read_v2(folder: Path) -> float | None:
    try:
        fields = (folder / "cpu.max").read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        q, p = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _read_v1(folder: Path) -> float | None:
    try:
        q = int((folder / "cpu.cfs_quota_us").read_text().strip())
        p = int((folder / "cpu.cfs_period_us").read_text().strip())
    except (OSError, ValueError):
        return None
    return q / p if q > 0 and p > 0 else None  # -1: no quota


def cgroup_cpu_quota(proc_cgroup: Path = PROC_SELF_CGROUP,
                     root: Path = CGROUP_ROOT) -> float | None:
    """CPUs' worth of time the cgroups of this process allow (the tightest level), or None.

    Reads cgroup v2 ``cpu.max`` (``"max 100000"`` or ``"150000 100000"``) when the process is
    in a unified hierarchy with the cpu controller, else cgroup v1
    ``cpu.cfs_quota_us / cpu.cfs_period_us`` (``-1``: no quota). Anything unreadable counts
    as no limit: the affinity mask still applies.
    """
    limits: list[float] = []
    lines = _cgroup_lines(proc_cgroup)
    for controllers, path in lines:
        if controllers == "":  # v2: one unified hierarchy
            for folder in _ancestors(root, path):
                value = _read_v2(folder)
                if value is not None:
                    limits.append(value)
    for controllers, path in lines:
        if "cpu" not in controllers.split(","):
            continue
        for name in CGROUP_V1_CPU_DIRS:
            mount = root / name
            if mount.is_dir():
                for folder in _ancestors(mount, path):
                    value = _read_v1(folder)
                    if value is not None:
                        limits.append(value)
                break
    return min(limits) if limits else None


def cpu_budget(*, affinity: int | None = None, proc_cgroup: Path = PROC_SELF_CGROUP,
               root: Path = CGROUP_ROOT) -> CpuBudget:
    """The CPUs this process may use: affinity mask and cgroup quota (read now).

    ``affinity`` replaces the mask's reading; the cgroup files are read under ``root`` (tests
    point both paths at fakes).
    """
    count = affinity if affinity is not None else affinity_cpus()
    return CpuBudget(max(1, int(count)), cgroup_cpu_quota(proc_cgroup, root))


def choose_threads(requested: int | None = None, *, workers: int = 1,
                   budget: CpuBudget | None = None) -> ThreadChoice:
    """Threads for each forward pass.

    Args:
        requested: an explicit count (``threads=``, ``--threads``, ``S3OD_THREADS``); it wins.
        workers: model copies running forward passes at the same time on these CPUs (server
            processes, Ray actors on one node); they share the CPUs equally.
        budget: the readings (:func:`cpu_budget` when ``None``).

    Threads are rounded down: in a fork-join region every thread waits for the slowest, so a
    thread that only gets part of a CPU (a 1.5-CPU quota split in two) stalls all of them.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be >= 1, got {requested}")
        return ThreadChoice(int(requested), "as requested")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    budget = budget or cpu_budget()
    threads = max(1, math.floor(budget.cpus / workers + 1e-9))
    reason = budget.describe() + (f" shared by {workers} workers" if workers > 1 else "")
    return ThreadChoice(threads, reason)


def actor_threads(cpus_per_actor: float, num_actors: int,
                  budget: CpuBudget | None = None) -> ThreadChoice:
    """Threads for one Ray actor, so actors on a node times threads never exceed its CPUs.

    Ray places an actor only where its ``num_cpus`` reservation fits, so each actor uses the
    CPUs it reserved (at least one, at most what the process may use). Without a reservation
    (``cpus_per_actor`` 0) any number of actors may land on one node: the worst case, all
    ``num_actors`` of them, sets the share.
    """
    budget = budget or cpu_budget()
    if cpus_per_actor >= 1:
        threads = max(1, min(math.floor(cpus_per_actor + 1e-9), math.floor(budget.cpus)))
        return ThreadChoice(threads, f"{cpus_per_actor:g} CPUs reserved per Ray actor, "
                                     f"{budget.describe()}")
    return choose_threads(None, workers=max(1, num_actors), budget=budget)


def ort_session_options(ort: Any, threads: int | None = None, *, spin: bool = False) -> Any:
    """ONNX Runtime session options for one forward pass's ``threads``, without spin-waits.

    ONNX Runtime's intra-op threads spin between operations by default. Measured on the
    project's 2-core VM with s3od-lite (issue 24, docs/speed.md): turning that off cost
    nothing idle (40 vs 38 ms per photo) and made a photo 81 -> 60 ms with one core busy, and
    103 -> 44 ms (median) under unrelated load. The setting is per session, so the library
    may choose it without touching the rest of a program.
    """
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    options.add_session_config_entry(ORT_SPIN_KEY, "1" if spin else "0")
    return options


def quiet_openmp(environ: MutableMapping[str, str] | None = None,
                 modules: Mapping[str, object] | None = None) -> dict[str, str]:
    """Make idle OpenMP threads sleep at once instead of spinning (set before torch loads).

    Only where s3od owns the process (the ``s3od`` command, Ray actors): a library call must
    not change how the rest of a program's OpenMP behaves. Nothing is set when the user set
    any of :data:`USER_OPENMP_VARS`, nor once torch is imported (the runtime has read the
    environment by then).
    Returns what was set.
    """
    environ = os.environ if environ is None else environ
    loaded: Mapping[str, object] = sys.modules if modules is None else modules
    if "torch" in loaded or any(k in environ for k in USER_OPENMP_VARS):
        return {}
    added = {k: v for k, v in QUIET_OPENMP_ENV.items() if k not in environ}
    environ.update(added)
    return added
