"""What this CPU can do per precision: square-GEMM and attention throughput (the speed bound).

The speed targets of the DINOv3-B model depend on how much faster bf16 matrix products run
than float32 on the machine at hand: about 7x with AMX tiles (Sapphire Rapids and later Xeons),
about 2x with AVX512-BF16 dot products alone (AMD Zen 4, Cooper Lake), none without either.
This prints both for the current CPU, plus the fused attention kernel (SDPA) at DINOv3-B's
shape for a 512 and a 1024 input, so a table of model timings can be read against them.

Example:
    python benchmarks/gemm_peak.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--size", type=int, default=2048, help="GEMM side")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    if args.threads:
        torch.set_num_threads(args.threads)
    print("# GEMM and attention throughput (benchmarks/gemm_peak.py)\n")
    for key, value in common.machine_description().items():
        print(f"- {key}: {value}")
    print(f"- command: python benchmarks/gemm_peak.py {' '.join(sys.argv[1:])}\n")
    print("| operation | shape | fp32 | bf16 | bf16 / fp32 |")
    print("|---|---|--:|--:|--:|")
    n = args.size
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        seconds = common.best_seconds(lambda a=a, b=b: a @ b, args.repeats, warmup=True)
        rates[dtype] = 2 * n**3 / seconds / 1e9
    ratio = rates[torch.bfloat16] / rates[torch.float32]
    print(f"| GEMM | {n}x{n}x{n} | {rates[torch.float32]:.0f} GFLOPS | "
          f"{rates[torch.bfloat16]:.0f} GFLOPS | {ratio:.2f}x |")
    # DINOv3-B: 12 heads of 64; 1 class + 4 register tokens + (side/16)^2 patches.
    for side in (512, 1024):
        tokens = 5 + (side // 16) ** 2
        flops = 4 * 12 * tokens * tokens * 64  # QK^T and PV
        seconds = {}
        for dtype in (torch.float32, torch.bfloat16):
            q, k, v = (torch.randn(1, 12, tokens, 64, dtype=dtype) for _ in range(3))
            seconds[dtype] = common.best_seconds(
                lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v),
                max(2, args.repeats // 2), warmup=True)
        print(f"| SDPA, one DINOv3-B layer at {side} px | 12x{tokens}x64 | "
              f"{1e3 * seconds[torch.float32]:.0f} ms ({flops / seconds[torch.float32] / 1e9:.0f}"
              f" GFLOPS) | {1e3 * seconds[torch.bfloat16]:.0f} ms "
              f"({flops / seconds[torch.bfloat16] / 1e9:.0f} GFLOPS) | "
              f"{seconds[torch.float32] / seconds[torch.bfloat16]:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
