"""Bounded load test of ``s3od serve`` on loopback: latency, throughput, memory, lost requests.

Starts the real server (one subprocess per configuration, side by side in one run), sends a
fixed number of requests with fixed concurrency, a share of them garbage that must come back as
400, and reports p50/p95 latency, throughput, the server's RSS before / peak / after, the
batches it formed, and how many requests were lost (no answer, or an unexpected status).

    python benchmarks/serve_load.py                       # max-batch 1 vs 4, 500 requests
    python benchmarks/serve_load.py --requests 200 --rounds 3 --batches 1   # memory flat?
    python benchmarks/serve_load.py --model s3od-lite --image-size 512 --batches 1,8

Only 127.0.0.1 is ever contacted; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@dataclass
class Outcome:
    kind: str  # "image" or "garbage"
    status: int | None  # None: no answer (transport error or client timeout)
    seconds: float


@dataclass
class RunReport:
    label: str
    outcomes: list[Outcome]
    wall_s: float
    rss_before: int
    rss_peak: int
    rss_after: int
    batches: dict = field(default_factory=dict)

    def lost(self) -> int:
        expected = {"image": 200, "garbage": 400}
        return sum(o.status != expected[o.kind] for o in self.outcomes)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    mem = psutil.virtual_memory().total / 2**30
    return (f"{cpu}, {os.cpu_count()} logical cores, {mem:.0f} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, torch {torch.__version__}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def real_images(limit: int) -> list[bytes]:
    """Real photos: ../shared/data when present (not redistributed), else the repo samples."""
    paths = sorted(SHARED_DATA.glob("*/images/*.jpg")) if SHARED_DATA.is_dir() else []
    if not paths:
        paths = sorted((REPO / "assets" / "samples").glob("*.jpg"))
    random.Random(0).shuffle(paths)
    return [p.read_bytes() for p in paths[:limit]]


def garbage(rng: random.Random, images: list[bytes]) -> bytes:
    """Undecodable bodies: random bytes, or a real JPEG cut short."""
    if rng.random() < 0.5:
        return rng.randbytes(rng.randint(64, 50_000))
    data = rng.choice(images)
    return data[: len(data) // 3]


def tiny_checkpoint(folder: Path) -> Path:
    """A random-weight lite model (until the trained s3od-lite weights are bundled)."""
    import torch

    from s3od.hub import save_checkpoint
    from s3od.modeling import LiteSegmentation

    torch.manual_seed(0)
    model = LiteSegmentation(features=32)
    return save_checkpoint(model.state_dict(), folder / "random-lite.safetensors", "lite",
                           {"features": 32})


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


async def drive(url: str, bodies: list[tuple[str, bytes]], concurrency: int,
                timeout_s: float) -> list[Outcome]:
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        async def one(kind: str, body: bytes) -> Outcome:
            async with gate:
                start = time.perf_counter()
                try:
                    r = await client.post("/v1/remove", content=body,
                                          headers={"Content-Type": "image/jpeg"})
                    status: int | None = r.status_code
                except httpx.HTTPError:
                    status = None
                return Outcome(kind, status, time.perf_counter() - start)

        return await asyncio.gather(*(one(kind, body) for kind, body in bodies))


async def sample_peak(proc: psutil.Process, stop: asyncio.Event) -> int:
    peak = 0
    while not stop.is_set():
        peak = max(peak, tree_rss(proc))
        await asyncio.sleep(0.05)
    return max(peak, tree_rss(proc))


async def load(url: str, proc: psutil.Process, bodies, concurrency: int, timeout_s: float):
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_peak(proc, stop))
    start = time.perf_counter()
    outcomes = await drive(url, bodies, concurrency, timeout_s)
    wall = time.perf_counter() - start
    stop.set()
    return outcomes, wall, await sampler


def run_config(label: str, serve_args: list[str], bodies, args) -> list[RunReport]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "s3od.cli", "serve", "--port", str(port), "--log-level",
           "warning", *serve_args]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise SystemExit(f"server exited: {server.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("server did not start within 120 s")
            time.sleep(0.2)
        proc = psutil.Process(server.pid)
        # one warm-up request so the first forward pass is not in the numbers
        warmup = next(body for kind, body in bodies if kind == "image")
        httpx.post(f"{url}/v1/remove", content=warmup, headers={"Content-Type": "image/jpeg"},
                   timeout=120)
        reports = []
        seen = httpx.get(f"{url}/healthz", timeout=5).json()["batches"]["count"]
        for round_ in range(1, args.rounds + 1):
            rss_before = tree_rss(proc)
            outcomes, wall, peak = asyncio.run(load(url, proc, bodies, args.concurrency,
                                                    args.request_timeout))
            time.sleep(0.5)
            rss_after = tree_rss(proc)
            batches = httpx.get(f"{url}/healthz", timeout=5).json()["batches"]
            batches["count"], seen = batches["count"] - seen, batches["count"]  # this round's
            name = f"{label} r{round_}" if args.rounds > 1 else label
            reports.append(RunReport(name, outcomes, wall, rss_before, peak, rss_after, batches))
        alive = server.poll() is None
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
    if not alive:
        raise SystemExit(f"{label}: the server died during the run")
    return reports


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def print_table(reports: list[RunReport]) -> None:
    mb = 2**20
    head = (f"{'config':<14}{'sent':>6}{'200':>6}{'400':>6}{'other':>7}{'lost':>6}"
            f"{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'img/s':>8}{'batches':>9}{'largest':>8}"
            f"{'RSS before':>12}{'peak':>8}{'after':>8}")
    print(head)
    print("-" * len(head))
    for r in reports:
        good = [o.seconds * 1000 for o in r.outcomes if o.kind == "image" and o.status == 200]
        count = {code: sum(o.status == code for o in r.outcomes) for code in (200, 400)}
        other = len(r.outcomes) - count[200] - count[400]
        print(f"{r.label:<14}{len(r.outcomes):>6}{count[200]:>6}{count[400]:>6}{other:>7}"
              f"{r.lost():>6}{percentile(good, 0.5):>9.0f}{percentile(good, 0.95):>9.0f}"
              f"{max(good, default=float('nan')):>9.0f}{count[200] / r.wall_s:>8.2f}"
              f"{r.batches.get('count', 0):>9}{r.batches.get('largest', 0):>8}"
              f"{r.rss_before / mb:>10.0f}MB{r.rss_peak / mb:>6.0f}MB{r.rss_after / mb:>6.0f}MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None,
                        help="model for the server (default: a random-weight lite checkpoint)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--garbage", type=float, default=0.1, help="share of garbage bodies")
    parser.add_argument("--batches", default="1,4", help="--max-batch values, side by side")
    parser.add_argument("--window-ms", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=None, help="server torch threads")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the load on the same server (memory must stay flat)")
    parser.add_argument("--request-timeout", type=float, default=120.0, help="client timeout")
    args = parser.parse_args()
    if (not 0 < args.requests <= 5000 or not 0 < args.concurrency <= 256
            or not 0 < args.rounds <= 10):
        raise SystemExit("keep it bounded: 1..5000 requests, 1..256 concurrent, 1..10 rounds")

    rng = random.Random(0)
    images = real_images(64)
    bodies = [("garbage", garbage(rng, images)) if rng.random() < args.garbage
              else ("image", rng.choice(images)) for _ in range(args.requests)]
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(tiny_checkpoint(Path(tmp)))
        base = ["--model", model, "--image-size", str(args.image_size),
                "--batch-window-ms", str(args.window_ms)]
        if args.threads:
            base += ["--threads", str(args.threads)]
        print(f"machine: {machine()}")
        print(f"model: {args.model or 'random-weight lite (features=32)'} at "
              f"{args.image_size}px; {args.requests} requests, {args.concurrency} concurrent, "
              f"{sum(k == 'garbage' for k, _ in bodies)} garbage; {len(images)} distinct "
              f"real images ({'../shared/data' if SHARED_DATA.is_dir() else 'assets/samples'})")
        reports = []
        for value in args.batches.split(","):
            label = f"max-batch {int(value)}"
            print(f"running {label} ...", flush=True)
            # the server's default admission (4 working, 64 queued) unless the batch needs more
            serve = [*base, "--max-batch", value, "--max-concurrency", str(max(4, int(value)))]
            reports.extend(run_config(label, serve, bodies, args))
    print()
    print_table(reports)
    lost = sum(r.lost() for r in reports)
    print(f"\nlost requests (no answer or unexpected status): {lost}")
    if lost:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
