"""Work splitting, resume bookkeeping, manifests, progress bars and atomic writes.

Every step of the pipeline runs the same way on one laptop or on 64 GPUs: it lists its work
items in a fixed order, keeps the contiguous slice that belongs to this shard, skips items whose
outputs already exist (resume), and records what it did in a per-shard manifest. Outputs are
written to a temporary name and renamed, so an interrupted run never leaves a half-written file
under a final name and "the file exists" is a reliable "the item is done".
"""

from __future__ import annotations

import json
import os
import platform
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

# Re-exported: the step modules and user code import PipelineError from here.
from synth_sod.errors import PipelineError as PipelineError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's part of the work: shard ``index`` of ``count`` (0-based)."""

    index: int = 0
    count: int = 1
    source: str = "default"

    @property
    def tag(self) -> str:
        """File-name fragment, e.g. ``shard-00003-of-00012``."""
        return f"shard-{self.index:05d}-of-{self.count:05d}"


def _env_int(env: dict[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise PipelineError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_shard(num_shards: int | None = None, shard_index: int | None = None,
                  env: dict[str, str] | None = None, max_tasks: int | None = None) -> Shard:
    """Which shard this process is, from flags first, then launcher variables.

    Order: ``--num-shards/--shard-index``; torchrun (``WORLD_SIZE``/``RANK``); a SLURM job
    array (``SLURM_ARRAY_TASK_ID`` minus ``SLURM_ARRAY_TASK_MIN`` over ``SLURM_ARRAY_TASK_COUNT``,
    or over ``max_tasks`` as the published scripts did); ``srun`` tasks
    (``SLURM_PROCID``/``SLURM_NTASKS``); otherwise one shard.
    """
    env = dict(os.environ if env is None else env)
    if num_shards is not None or shard_index is not None:
        count = 1 if num_shards is None else num_shards
        index = 0 if shard_index is None else shard_index
        shard = Shard(index, count, "flags")
    elif _env_int(env, "WORLD_SIZE") is not None:
        shard = Shard(_env_int(env, "RANK") or 0, _env_int(env, "WORLD_SIZE") or 1, "torchrun")
    elif _env_int(env, "SLURM_ARRAY_TASK_ID") is not None:
        task = _env_int(env, "SLURM_ARRAY_TASK_ID") or 0
        first = _env_int(env, "SLURM_ARRAY_TASK_MIN") or 0
        count = _env_int(env, "SLURM_ARRAY_TASK_COUNT") or max_tasks
        if count is None:
            raise PipelineError("SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT "
                                "nor max_tasks/--num-shards says how many shards there are")
        shard = Shard(task - first, count, "slurm-array")
    elif _env_int(env, "SLURM_NTASKS") is not None and (_env_int(env, "SLURM_NTASKS") or 1) > 1:
        shard = Shard(_env_int(env, "SLURM_PROCID") or 0, _env_int(env, "SLURM_NTASKS") or 1,
                      "slurm-tasks")
    else:
        shard = Shard(0, 1, "default")
    if shard.count < 1:
        raise PipelineError(f"number of shards must be >= 1, got {shard.count}")
    if not 0 <= shard.index < shard.count:
        raise PipelineError(f"shard index {shard.index} is outside 0..{shard.count - 1} "
                            f"(from {shard.source})")
    return shard


def shard_bounds(n_items: int, shard: Shard, weights: Sequence[float] | None = None
                 ) -> tuple[int, int]:
    """``[start, stop)`` of this shard's contiguous slice; the slices cover every item once.

    Without weights the first ``n % count`` shards get one extra item (the published split lost
    the remainder). With weights (e.g. images per class) the cut points follow the cumulative
    weight, so shards get similar amounts of work.
    """
    if weights is None:
        base, extra = divmod(n_items, shard.count)
        start = shard.index * base + min(shard.index, extra)
        return start, start + base + (1 if shard.index < extra else 0)
    if len(weights) != n_items:
        raise ValueError("weights must have one entry per item")
    total = float(sum(weights))
    if total <= 0:
        return shard_bounds(n_items, shard)

    def cut(k: int) -> int:
        if k <= 0:
            return 0
        if k >= shard.count:
            return n_items
        target, acc = total * k / shard.count, 0.0
        for i, w in enumerate(weights):
            if acc + w / 2 >= target:
                return i
            acc += w
        return n_items

    return cut(shard.index), cut(shard.index + 1)


def take_shard(items: Sequence[T], shard: Shard, weights: Sequence[float] | None = None) -> list[T]:
    """The items of this shard (see :func:`shard_bounds`)."""
    start, stop = shard_bounds(len(items), shard, weights)
    return list(items[start:stop])


# ----------------------------------------------------------------------------- atomic writes


def readable_text(text: str) -> str:
    """``text`` with bytes of a non-UTF-8 file name (lone surrogates) shown as ``\\xNN``.

    Python maps such bytes to surrogates, which ``str.encode("utf-8")`` refuses: a manifest or
    log line naming the file would crash the step that wanted to report it.
    """
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write to a temporary file next to ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """JSON (UTF-8, indented, non-ASCII kept) written atomically."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=str)
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(path: str | os.PathLike, writer: Any) -> Path:
    """Call ``writer(tmp_path)`` then rename; for libraries that only write to a path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + path.suffix,
                               dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read JSON with an error that names the file instead of a decoder traceback."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PipelineError(f"{what} {path} is not valid JSON: {err}") from None


# ----------------------------------------------------------------------------- manifests


@dataclass
class Manifest:
    """What one shard of one step did; rewritten atomically as work progresses.

    Lives at ``<output>/manifests/<step>-<shard tag>.json``. ``done`` counts items produced in
    this run, ``skipped`` items found complete from an earlier run, ``failed`` lists item ids
    with their error, ``items`` holds per-item records a step wants to keep.
    """

    path: Path
    step: str
    shard: Shard
    settings: dict[str, Any] = field(default_factory=dict)
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    finished: float | None = None
    _last_save: float = 0.0

    @classmethod
    def create(cls, output_dir: str | os.PathLike, step: str, shard: Shard,
               settings: dict[str, Any] | None = None) -> Manifest:
        path = Path(output_dir) / "manifests" / f"{step}-{shard.tag}.json"
        manifest = cls(path, step, shard, dict(settings or {}))
        if path.is_file():  # keep the records of earlier runs of this shard
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
                manifest.items = list(old.get("items", []))
            except (json.JSONDecodeError, OSError):
                pass
        return manifest

    def record(self, item: dict[str, Any] | None = None) -> None:
        """One item produced now."""
        self.done += 1
        if item is not None:
            self.items.append(item)
        self.save(force=False)

    def skip(self) -> None:
        self.skipped += 1

    def fail(self, item_id: str, error: BaseException | str) -> None:
        """One item failed; ids and messages from odd file names are made UTF-8 safe."""
        self.failed.append({"id": readable_text(item_id),
                            "error": readable_text(str(error))[:500]})
        self.save(force=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "shard_index": self.shard.index,
            "num_shards": self.shard.count,
            "shard_source": self.shard.source,
            "host": socket.gethostname(),
            "python": platform.python_version(),
            "settings": self.settings,
            "total": self.total,
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
            "finished": (time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.finished))
                         if self.finished else None),
            "items": self.items,
        }

    def save(self, force: bool = True) -> None:
        """Write now (``force``) or at most every 10 s, so big runs do not thrash the disk."""
        now = time.time()
        if force or now - self._last_save > 10.0:
            atomic_write_json(self.path, self.to_dict())
            self._last_save = now

    def close(self) -> None:
        self.finished = time.time()
        self.save()


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "",
             disable: bool | None = None) -> Iterator[T]:
    """A tqdm bar with count, rate and ETA on stderr (quiet when ``S3OD_NO_PROGRESS`` is set)."""
    from tqdm.auto import tqdm

    if disable is None:
        disable = bool(os.environ.get("S3OD_NO_PROGRESS"))
    yield from tqdm(iterable, total=total, desc=desc, unit="item", dynamic_ncols=True,
                    mininterval=1.0, disable=disable)


# ----------------------------------------------------------------------------- output locks


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (signal 0 only asks)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    return True


class OutputLock:
    """One writer per output folder and shard: ``<output>/manifests/<step>-<shard>.lock``.

    Two runs of the same shard on one folder would both label every photo (each sees the
    other's masks only once written). The lock file holds the owner's pid and host; it is held
    with ``flock`` where the system has it, so a killed owner never blocks the next run. A lock
    left by a process that no longer runs on this host is taken over (and said so); one whose
    owner still runs is refused with :class:`PipelineError`. Released (and removed) on exit.
    """

    def __init__(self, output_dir: str | os.PathLike, step: str, shard: Shard) -> None:
        self.path = Path(output_dir) / "manifests" / f"{step}-{shard.tag}.lock"
        self.taken_over: dict[str, Any] | None = None
        self._fd: int | None = None

    def _read_owner(self) -> dict[str, Any]:
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def _refuse(self, owner: dict[str, Any]) -> PipelineError:
        who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"
        return PipelineError(f"another run ({who}) is writing to this output folder and shard; "
                             f"wait for it, or delete {self.path} if it no longer runs")

    def acquire(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        host = socket.gethostname()
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not self._lock(fd):
                    raise self._refuse(self._read_owner())
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                    raise FileNotFoundError  # removed by its owner meanwhile: try again
            except FileNotFoundError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            owner = self._read_owner()
            pid = owner.get("pid")
            if owner and pid != os.getpid():
                if (owner.get("host") == host and isinstance(pid, int)
                        and _pid_alive(pid)):
                    os.close(fd)
                    raise self._refuse(owner)
                self.taken_over = owner
            record = json.dumps({"pid": os.getpid(), "host": host,
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
            self._fd = fd
            return self
        raise PipelineError(f"cannot take the lock {self.path}: it keeps changing")

    @staticmethod
    def _lock(fd: int) -> bool:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: the pid check alone decides
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
