"""Cost of concept attention + feature capture on a FLUX transformer forward pass.

Baseline and candidate run side by side in one process on the same random-weight transformer
(diffusers ``FluxTransformer2DModel`` from a config: no download): the stock attention
processors, then :class:`ConceptAttention` (concept stream in every dual block, scores from
every dual block) plus :class:`FeatureCapture` on 4 single blocks. Calls are interleaved and
the median is reported. It also prints the memory the published way of collecting the maps
(stacking every (step, block) output vector) would need versus the running sum used here, for
the published 1024² setting.

    python benchmarks/data_generation_concept_attention.py [--width 256] [--tokens 256]

Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def build(width: int, dual: int, single: int):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    heads = width // 64
    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=dual, num_single_layers=single,
        attention_head_dim=64, num_attention_heads=heads, joint_attention_dim=width,
        pooled_projection_dim=width, guidance_embeds=True, axes_dims_rope=(16, 24, 24)).eval()


def main() -> None:
    from synth_sod.data_generation.concept_attention import ConceptAttention
    from synth_sod.data_generation.flux import FeatureCapture

    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=256, help="transformer width (heads x 64)")
    ap.add_argument("--dual", type=int, default=4)
    ap.add_argument("--single", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256, help="image tokens (256 = 256x256 px)")
    ap.add_argument("--text", type=int, default=512, help="text tokens (published 512)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tr = build(args.width, args.dual, args.single)
    side = int(args.tokens ** 0.5)
    ids = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1)
    img_ids = torch.cat([torch.zeros(side * side, 1), ids.reshape(-1, 2).float()], 1)
    inputs = dict(hidden_states=torch.randn(1, side * side, 64),
                  encoder_hidden_states=torch.randn(1, args.text, args.width),
                  pooled_projections=torch.randn(1, args.width), timestep=torch.tensor([0.5]),
                  guidance=torch.tensor([3.5]), img_ids=img_ids,
                  txt_ids=torch.zeros(args.text, 3), return_dict=False)

    def run() -> tuple[float, torch.Tensor]:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = tr(**inputs)[0]
        return time.perf_counter() - t0, out

    run()  # warm-up
    stock_t, probe_t = [], []
    for _ in range(args.repeats):
        t, ref = run()
        stock_t.append(t)
        ca = ConceptAttention(tr, list(range(args.dual)))
        fc = FeatureCapture(tr, [0, args.single // 3, 2 * args.single // 3, args.single - 1],
                            feature_dim=args.width // 4)
        ca.state.reset(["dog", "background"], torch.randn(1, 2, args.width),
                       torch.randn(1, args.width), steps=[0])
        fc.reset(0)
        t, out = run()
        probe_t.append(t)
        assert ca.state.num_scores == args.dual and len(fc.features()) == 4
        ca.remove()
        fc.remove()
        diff = (out - ref).abs().max().item()

    stock, probe = statistics.median(stock_t), statistics.median(probe_t)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads")
    print(f"transformer: width {args.width}, {args.dual} dual + {args.single} single blocks, "
          f"{args.tokens} image + {args.text} text tokens, {args.repeats} interleaved runs")
    print("| processors | median forward (ms) | min (ms) | median relative |")
    print("|---|---|---|---|")
    print(f"| stock diffusers | {stock * 1e3:.1f} | {min(stock_t) * 1e3:.1f} | 1.00 |")
    print(f"| concept attention + feature hooks | {probe * 1e3:.1f} | {min(probe_t) * 1e3:.1f} "
          f"| {probe / stock:.3f} |")
    print(f"max |output difference| = {diff:.3g} (the image stream is untouched)")

    n, k, d, t_steps, layers = 4096, 2, 3072, 3, 18  # published 1024x1024 generation
    stacked = t_steps * layers * (n + k) * d * 2  # bf16 vectors kept until the end
    running = n * k * 4  # float32 running sum of softmax scores
    print(f"published 1024² maps (3 steps x 18 blocks): stacking {stacked / 2**20:.0f} MiB "
          f"of bf16 vectors vs running sum {running / 2**10:.0f} KiB")


if __name__ == "__main__":
    main()
