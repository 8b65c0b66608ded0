"""Background removal over datasets too big for one machine, on a Ray cluster.

Shape of the pipeline::

    list inputs (driver, pyarrow filesystems: local, s3://, gs://, abfs://, file://)
      -> drop inputs whose output exists (resume)
      -> ray.data.from_items  (source, key, target)
      -> map_batches(_RemovalActor, ActorPoolStrategy)  each actor loads the model once, then
         per batch: read bytes -> decode -> one forward pass -> write PNG/WebP files or one
         parquet part, and returns only a small status row per image
      -> the driver streams the status rows into a :class:`BulkSummary`

Actors write their own outputs, so a crash loses at most the batches in flight, and a rerun with
``resume=True`` skips every image whose output is already there. The weights travel through the
Ray object store (resolved on the driver), so workers need neither the checkpoint file nor
access to the model hub; they need s3od installed (``pip install 's3od[ray]'``).
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from s3od.errors import S3ODError

if TYPE_CHECKING:
    import pyarrow.fs

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".jfif"}
OUTPUT_FORMATS = ("png", "webp", "parquet")
RAY_EXTRA_HINT = "install the Ray extra: pip install 's3od[ray]'"
# Columns of the parquet parts; one row per image that was processed successfully.
PARQUET_COLUMNS = ("key", "source", "width", "height", "best_index", "iou", "all_ious",
                   "mask_png")


class BulkInputError(S3ODError, ValueError):
    """Inputs or outputs of a bulk run are missing, clash, or do not fit the options."""


class RayConnectionError(S3ODError, ConnectionError):
    """No Ray cluster answered at the given address."""


@dataclass
class BulkSummary:
    """Counts of one run; ``failed`` lists ``(source, reason)`` for images that gave no output."""

    output: str
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        """Every input image seen, whatever happened to it."""
        return self.done + self.skipped + len(self.failed)


@dataclass(frozen=True)
class RenderOptions:
    """What each image becomes in the png/webp modes (as ``s3od remove`` does it)."""

    mask_only: bool = False
    bg_color: tuple[int, int, int] | None = None
    crop: bool = False
    threshold: float = 0.5


def _ray() -> Any:
    try:
        import ray
        import ray.data  # the extra must include Ray Data
    except ImportError as err:
        raise ImportError(f"bulk removal needs Ray Data; {RAY_EXTRA_HINT}") from err
    return ray


def resolve_filesystem(uri: str, filesystem: pyarrow.fs.FileSystem | None = None
                       ) -> tuple[pyarrow.fs.FileSystem, str]:
    """``(filesystem, path)`` for a local path or an object-store URI (``s3://bucket/prefix``).

    An explicit ``filesystem`` (e.g. ``pyarrow.fs.S3FileSystem`` with credentials or a custom
    endpoint) wins; the URI scheme is then dropped.
    """
    import pyarrow.fs as pafs

    if filesystem is not None:
        return filesystem, uri.split("://", 1)[-1].rstrip("/") or "/"
    if "://" in uri:
        try:
            fs, path = pafs.FileSystem.from_uri(uri)
        except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
            raise BulkInputError(f"cannot open {uri}: {err}") from err
        return fs, path.rstrip("/") or "/"
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def _is_local(fs: pyarrow.fs.FileSystem) -> bool:
    import pyarrow.fs as pafs

    return isinstance(fs, pafs.LocalFileSystem)


def _list_files(fs: pyarrow.fs.FileSystem, root: str) -> list[str]:
    """Every file below ``root`` (recursive), skipping hidden temporaries (``.name.part``)."""
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return [i.path for i in infos
            if i.type == pafs.FileType.File and not PurePosixPath(i.path).name.startswith(".")]


def list_images(inputs: Sequence[str], filesystem: pyarrow.fs.FileSystem | None = None
                ) -> tuple[list[pyarrow.fs.FileSystem], list[tuple[int, str, str]]]:
    """Expand inputs to ``(filesystems, [(fs index, source path, key)])``.

    Folders and prefixes recurse (key = path below the folder); single files keep their name;
    local globs expand. Keys decide output names, so two inputs with the same key are an error.
    """
    import pyarrow.fs as pafs

    filesystems: list[Any] = []
    items: list[tuple[int, str, str]] = []
    for text in inputs:
        fs, path = resolve_filesystem(text, filesystem)
        filesystems.append(fs)
        index = len(filesystems) - 1
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            for file in sorted(_list_files(fs, path)):
                if PurePosixPath(file).suffix.lower() in IMAGE_SUFFIXES:
                    items.append((index, file, str(PurePosixPath(file).relative_to(path))))
        elif info.type == pafs.FileType.File:
            items.append((index, path, PurePosixPath(path).name))
        elif _is_local(fs) and any(ch in text for ch in "*?["):
            matches = sorted(p for p in glob.glob(os.path.expanduser(text), recursive=True)
                             if os.path.isfile(p))
            if not matches:
                raise BulkInputError(f"no files match {text!r}")
            items.extend((index, os.path.abspath(p), os.path.basename(p)) for p in matches)
        else:
            raise BulkInputError(f"input not found: {text}")
    seen: dict[str, str] = {}
    for _, source, key in items:
        stem = str(PurePosixPath(key).with_suffix(""))
        if stem in seen:
            raise BulkInputError(f"{seen[stem]} and {source} would write the same output "
                                 f"({stem}); pass their folders separately or rename one")
        seen[stem] = source
    return filesystems, items


def _finished_parquet_keys(fs: pyarrow.fs.FileSystem, root: str) -> set[str]:
    """Keys already present in the parquet parts under ``root`` (unreadable parts are ignored)."""
    import pyarrow.parquet as pq

    keys: set[str] = set()
    for path in _list_files(fs, root):
        if not path.endswith(".parquet"):
            continue
        try:
            table = pq.read_table(path, columns=["key"], filesystem=fs)
        except Exception as err:  # a part cut short by a crash: redo its images
            log.warning("s3od: ignoring unreadable parquet part %s (%s)", path, err)
            continue
        keys.update(table.column("key").to_pylist())
    return keys


def _put(fs: pyarrow.fs.FileSystem, path: str, data: bytes) -> None:
    """Write so that ``path`` is either absent or complete (local rename, one remote PUT)."""
    if _is_local(fs):
        import tempfile

        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".part",
                                   dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return
    with fs.open_output_stream(path) as fh:
        fh.write(data)


def actor_device(requested: str | None, gpu_ids: Sequence[Any]) -> str | None:
    """The device an actor runs on, given the GPUs Ray reserved for it (``ray.get_gpu_ids()``).

    Ray shows an actor only its reserved GPUs (``CUDA_VISIBLE_DEVICES``), numbered from 0, so a
    ``cuda:1`` meant for the driver's machine is an invalid ordinal there: a CUDA request runs
    on the first reserved GPU. Without a reservation the actor runs on the CPU unless CUDA was
    asked for explicitly (``gpus_per_actor=0``): a GPU nobody reserved may be another actor's.
    """
    cuda = requested is None or requested.startswith("cuda")
    if gpu_ids and cuda:
        return "cuda:0"
    if requested is None:
        return "cpu"
    return "cuda" if cuda else requested


@dataclass(frozen=True)
class ActorPlan:
    """Device and resources per actor, and the bounds of the (autoscaling) actor pool."""

    device: str
    cpus: float
    gpus: float
    min_size: int
    max_size: int


def plan_actors(device: str | None, num_actors: int, batches: int, cpus_per_actor: float,
                gpus_per_actor: float | None, resources: dict[str, float]) -> ActorPlan:
    """Fit the actor pool to the cluster (``resources``: ``ray.cluster_resources()``).

    ``device=None`` uses a GPU per actor when the cluster has any (it ran on the CPU before,
    or on an unreserved GPU 0 with newer Ray), else the CPU. A CUDA device reserves
    ``gpus_per_actor`` (default 1) per actor. The pool starts with one actor and grows up to
    ``num_actors``, capped by the batches to do and by how many actors the cluster's GPUs (and
    CPUs) can hold at once: a fixed pool larger than that never fills, and Ray Data times out.
    """
    cluster_gpus = float(resources.get("GPU", 0.0))
    cluster_cpus = float(resources.get("CPU", 0.0))
    if device is None:
        device = "cuda" if cluster_gpus >= 1 else "cpu"
    if device.startswith("cuda"):
        if device != "cuda":
            log.info("s3od: Ray actors use the GPU Ray reserves for them; the index in %r "
                     "is ignored", device)
            device = "cuda"
        gpus = 1.0 if gpus_per_actor is None else float(gpus_per_actor)
    else:
        gpus = float(gpus_per_actor or 0.0)
    capacity = max(1, num_actors)
    if gpus > 0:
        if cluster_gpus < gpus:
            raise BulkInputError(f"each actor needs {gpus:g} GPU but the Ray cluster has "
                                 f"{cluster_gpus:g}; use --device cpu or add GPU nodes")
        capacity = min(capacity, int(cluster_gpus / gpus + 1e-9))
    if cpus_per_actor > 0 and cluster_cpus >= cpus_per_actor:
        capacity = min(capacity, int(cluster_cpus / cpus_per_actor + 1e-9))
    if capacity < num_actors:
        log.warning("s3od: %d actors asked for, the Ray cluster holds %d at once (%g GPU, %g CPU "
                    "each); using at most %d", num_actors, capacity, gpus, cpus_per_actor,
                    capacity)
    max_size = max(1, min(capacity, batches))
    return ActorPlan(device, float(cpus_per_actor), gpus, 1, max_size)


class _RemovalActor:
    """One per Ray actor: holds a loaded model; ``__call__`` handles one batch of rows."""

    def __init__(self, model_ref: list[Any], image_size: int | None, device: str | None,
                 input_filesystems: list[Any], output_filesystem: Any, output_format: str,
                 render: RenderOptions, precision: str = "fp32", compile: bool = False,
                 threads: int | None = None, cpus_per_actor: float = 1.0,
                 num_actors: int = 1) -> None:
        from s3od.threads import actor_threads, quiet_openmp

        # The actor's process is ours: idle OpenMP threads sleep instead of spinning on CPUs
        # the other actors of the node reserved (only takes effect before torch loads).
        quiet_openmp()
        import ray

        from s3od.loading import load_remover

        if threads is None:
            threads = actor_threads(cpus_per_actor, num_actors).threads
        self.device = actor_device(device, ray.get_gpu_ids())
        self.remover = load_remover(ray.get(model_ref[0]), precision=precision,
                                    compile=compile, device=self.device, image_size=image_size,
                                    threads=threads)
        self.inputs = input_filesystems
        self.out_fs = output_filesystem
        self.fmt = output_format
        self.render = render

    def _read(self, fs_index: int, source: str) -> bytes:
        with self.inputs[fs_index].open_input_file(source) as fh:
            return fh.read()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from s3od.imageio import load_image

        sources = [str(s) for s in batch["source"]]
        n = len(sources)
        status, errors = ["failed"] * n, [""] * n
        with ThreadPoolExecutor(max_workers=min(8, n)) as pool:
            reads = list(pool.map(self._try_read, batch["fs"].tolist(), sources))
        rgbs, ok = [], []
        for i, (data, err) in enumerate(reads):
            if err is None:
                try:
                    rgbs.append(load_image(cast(bytes, data)))  # read: _try_read gave bytes
                    ok.append(i)
                    continue
                except S3ODError as decode_err:  # drop PIL's "<_io.BytesIO at 0x..>" noise
                    err = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(decode_err))
            errors[i] = err
        if ok:
            try:
                results = self.remover.remove_arrays(rgbs, self.render.threshold)
            except Exception as err:  # one bad batch must not stop the whole dataset
                results = None
                for i in ok:
                    errors[i] = f"inference failed: {type(err).__name__}: {err}"
            if results is not None:
                self._write(batch, ok, list(results), status, errors)
        return {"source": np.array(sources, dtype=object),
                "status": np.array(status, dtype=object),
                "error": np.array(errors, dtype=object)}

    def _try_read(self, fs_index: int, source: str) -> tuple[bytes | None, str | None]:
        try:
            return self._read(int(fs_index), source), None
        except OSError as err:
            return None, f"cannot read: {err}"

    def _write(self, batch: dict[str, np.ndarray], ok: list[int], results: list[Any],
               status: list[str], errors: list[str]) -> None:
        from s3od.imageio import encode_image

        if self.fmt == "parquet":
            rows = []
            for i, result in zip(ok, results, strict=True):
                h, w = result.predicted_mask.shape
                rows.append((str(batch["key"][i]), str(batch["source"][i]), w, h,
                             result.best_index, float(result.all_ious[result.best_index]),
                             [float(v) for v in result.all_ious],
                             encode_image(result.mask_image(), "PNG", compress_level=1)))
            try:
                self._write_parquet(rows, str(batch["target"][0]))
            except OSError as err:
                for i in ok:
                    errors[i] = f"cannot write parquet part: {err}"
                return
            for i in ok:
                status[i] = "done"
            return
        opts = self.render
        for i, result in zip(ok, results, strict=True):
            image = result.render(mask_only=opts.mask_only, background=opts.bg_color,
                                  crop=opts.crop)
            fmt = "WEBP" if self.fmt == "webp" else "PNG"
            # zlib level 1: ~2.4x faster than PIL's default 6, ~12% more bytes (png_encode.py).
            kwargs = {"lossless": True} if fmt == "WEBP" else {"compress_level": 1}
            target = str(batch["target"][i])
            try:
                _put(self.out_fs, target, encode_image(image, fmt, **kwargs))
                status[i] = "done"
            except OSError as err:
                errors[i] = f"cannot write {target}: {err}"

    def _write_parquet(self, rows: list[tuple], folder: str) -> None:
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = list(zip(*rows, strict=True))
        table = pa.table({
            "key": pa.array(columns[0], pa.string()),
            "source": pa.array(columns[1], pa.string()),
            "width": pa.array(columns[2], pa.int32()),
            "height": pa.array(columns[3], pa.int32()),
            "best_index": pa.array(columns[4], pa.int16()),
            "iou": pa.array(columns[5], pa.float32()),
            "all_ious": pa.array(columns[6], pa.list_(pa.float32())),
            "mask_png": pa.array(columns[7], pa.binary()),
        })
        buf = io.BytesIO()
        pq.write_table(table, buf)
        _put(self.out_fs, f"{folder}/part-{uuid.uuid4().hex}.parquet", buf.getvalue())


def remove_backgrounds_ray(
    inputs: str | Sequence[str],
    output: str,
    *,
    model: str | os.PathLike | None = None,
    image_size: int | None = None,
    device: str | None = None,
    precision: str = "fp32",
    compile: bool = False,
    output_format: Literal["png", "webp", "parquet"] = "png",
    render: RenderOptions | None = None,
    resume: bool = True,
    batch_size: int = 8,
    num_actors: int = 2,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float | None = None,
    address: str | None = None,
    filesystem: pyarrow.fs.FileSystem | None = None,
    threads: int | None = None,
) -> BulkSummary:
    """Cut out every image under ``inputs`` on a Ray cluster and write the results to ``output``.

    Args:
        inputs: files, folders, local globs or object-store prefixes (``s3://bucket/photos``).
        output: folder or object-store prefix. ``png``/``webp`` mirror the input tree
            (``a/b.jpg`` -> ``a/b.png``); ``parquet`` writes ``part-*.parquet`` files with the
            columns in :data:`PARQUET_COLUMNS` (soft mask as PNG bytes, IoU scores).
        model: as :func:`s3od.load_remover` takes it; an ``.onnx`` file makes the actors run
            ONNX Runtime without importing torch.
        device: per actor; ``cuda`` reserves one GPU per actor unless ``gpus_per_actor`` says
            otherwise, and each actor runs on the GPU Ray gives it (an index is ignored);
            ``None`` means a GPU per actor when the cluster has GPUs, else the CPU.
        precision, compile: per actor, as :func:`s3od.load_remover` takes them.
        render: cut-out options for png/webp (mask only, background colour, crop).
        resume: skip images whose output exists (png/webp: the file; parquet: the key in a part).
            With ``resume=False`` png/webp outputs are overwritten and a parquet folder must not
            hold parts yet.
        batch_size: images per forward pass, and rows per parquet part.
        num_actors: most actors (model copies) at once; the pool starts with one and never
            asks for more than the cluster's GPUs/CPUs hold (:func:`plan_actors`).
        address: Ray address (``auto``, ``ray://head:10001``, ``local`` to start a local
            instance). When Ray is already initialised in this process it is used as is.
        filesystem: a ``pyarrow.fs`` filesystem for inputs and output (credentials, endpoint).
        threads: CPU threads per actor's forward pass; ``None``: the CPUs the actor reserved
            (``cpus_per_actor``), so actors on a node never run more threads than it has
            CPUs (:func:`s3od.threads.actor_threads`).

    Example:
        >>> remove_backgrounds_ray("s3://bucket/photos", "s3://bucket/cutouts",
        ...                        address="auto", num_actors=8)  # doctest: +SKIP
    """
    if output_format not in OUTPUT_FORMATS:
        raise BulkInputError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, "
                             f"got {output_format!r}")
    if batch_size < 1 or num_actors < 1:
        raise BulkInputError("batch_size and num_actors must be >= 1")
    render = render or RenderOptions()
    if output_format == "parquet" and (render.mask_only or render.bg_color or render.crop):
        raise BulkInputError("parquet output stores the soft mask; --mask-only, --bg-color and "
                             "--crop apply to png/webp only")
    ray = _ray()
    start = time.perf_counter()
    filesystems, items = list_images([inputs] if isinstance(inputs, str) else list(inputs),
                                     filesystem)
    if not items:
        raise BulkInputError("no images found in the given inputs")
    out_fs, out_root = resolve_filesystem(output, filesystem)
    summary = BulkSummary(output=output)

    ext = f".{output_format}"
    if output_format == "parquet":
        finished = _finished_parquet_keys(out_fs, out_root)
        if finished and not resume:
            raise BulkInputError(f"{output} already holds parquet parts; resume (skip the "
                                 "finished images) or write to an empty folder")
        rows = [{"fs": i, "source": s, "key": k, "target": out_root}
                for i, s, k in items if k not in finished]
    else:
        existing = set(_list_files(out_fs, out_root)) if resume else set()
        rows = []
        for i, s, k in items:
            target = f"{out_root}/{PurePosixPath(k).with_suffix(ext)}"
            if target not in existing:
                rows.append({"fs": i, "source": s, "key": k, "target": target})
    summary.skipped = len(items) - len(rows)
    if not rows:
        summary.seconds = time.perf_counter() - start
        return summary

    from s3od.loading import portable_model

    payload = portable_model(model, precision=precision, compile=compile)
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise RayConnectionError(f"cannot connect to Ray at {address!r}: "
                                     f"{str(err).splitlines()[0][:300]}") from err
    elif address is not None:
        log.info("s3od: Ray is already initialised in this process; ignoring address %r",
                 address)
    try:
        blocks = max(1, math.ceil(len(rows) / batch_size))
        plan = plan_actors(device, num_actors, blocks, cpus_per_actor, gpus_per_actor,
                           ray.cluster_resources())
        model_ref = ray.put(payload)
        del payload
        dataset = ray.data.from_items(rows, override_num_blocks=blocks)
        statuses = dataset.map_batches(
            _RemovalActor,
            fn_constructor_kwargs={
                "model_ref": [model_ref], "image_size": image_size, "device": plan.device,
                "input_filesystems": filesystems, "output_filesystem": out_fs,
                "output_format": output_format, "render": render, "precision": precision,
                "compile": compile, "threads": threads, "cpus_per_actor": cpus_per_actor,
                "num_actors": num_actors,
            },
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=plan.min_size, max_size=plan.max_size),
            num_cpus=plan.cpus,
            num_gpus=plan.gpus or None,
        )
        for batch in statuses.iter_batches(batch_size=None, batch_format="numpy"):
            for source, state, error in zip(batch["source"], batch["status"], batch["error"],
                                            strict=True):
                if state == "done":
                    summary.done += 1
                else:
                    summary.failed.append((str(source), str(error)))
    finally:
        if started_here:
            ray.shutdown()
    summary.seconds = time.perf_counter() - start
    return summary
