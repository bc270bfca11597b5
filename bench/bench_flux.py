"""Per-step cost of the Flux image terms (XLabs, InstantX) on real-width Flux blocks, inside the real ComfyUI.

Run ``python3 scripts/bench_flux.py --help``; bench/README.md says what each figure means.

The model: ComfyUI's own Flux classes at Flux.1's real widths (hidden 3072, 24 heads of 128, T5 context 4096,
vector 768, RoPE axes 16/56/56) with as many double blocks as asked (default 2) and one single block, random weights
in bf16 (``--dtype``); a full 19 + 38 block model does not fit this machine, so the figures are reported per double
block. The adapter (``--adapter``): a random XLabs v2 file at the published shapes (16 tokens, CLIP-L 768 -> 4096,
K/V 4096 -> 3072 per double block), or a random InstantX file at the published per-block shapes (128 tokens, K/V
4096 -> 3072 per double and single block, no bias) whose projection reads a 16-wide feature instead of SigLIP's 1152
(the projection runs once per image, never per step; at 1152 it alone is 1.2 G parameters); loaded by the pack like
a real file, its tokens projected from a random feature.

One "step" is one call of the diffusion model on a cond + uncond batch (``cond_or_uncond`` [1, 0], batch 2) with the
transformer_options a sampler builds; call 0 is cold (K'/V' projected and cached), call 1 warm. Counted on the warm
call: aten ops added per block, host syncs added, FLOPs added against the floor (the image attention alone:
4 * B * heads * L_img * T * d per block), and the wall time patched / unpatched, alternated call by call.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

import torch

from testkit.flux_adapters import save_xlabs, xlabs_state_dict
from testkit.flux_standins import comfy_flux_model
from testkit.instantx_flux_adapters import instantx_parts
from testkit.adapters import save_adapter

from .bench_step import load_pack, randomise, start_comfyui
from .measure import OpCounter, duplicated_bytes, flop_counter

HIDDEN, HEADS, CONTEXT, VEC, CLIP_L = 3072, 24, 4096, 768, 768
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def build_flux(double_blocks: int, single_blocks: int, dtype: torch.dtype) -> Any:
    import comfy.model_management as mm
    import comfy.model_patcher

    config = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=VEC, context_in_dim=CONTEXT,
                  hidden_size=HIDDEN, mlp_ratio=4.0, num_heads=HEADS, depth=double_blocks,
                  depth_single_blocks=single_blocks, axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True,
                  guidance_embed=True)
    model = comfy_flux_model(config, dtype=dtype)
    randomise(model.diffusion_model)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=2, help="double blocks in the model (default 2)")
    ap.add_argument("--size", type=int, default=256, help="image size in pixels (latent size/8, 2x2 patches)")
    ap.add_argument("--text", type=int, default=128, help="text tokens (T5 sequence length)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="model and adapter weights")
    ap.add_argument("--rounds", type=int, default=5, help="alternated warm calls per variant")
    ap.add_argument("--adapter", choices=("xlabs", "instantx"), default="xlabs", help="which Flux adapter")
    args, rest = ap.parse_known_args()
    where = start_comfyui(rest)
    dtype = DTYPES[args.dtype]
    import comfy.model_management as mm

    with tempfile.TemporaryDirectory() as tmp:
        pack = load_pack(tmp)
        print(f"ComfyUI {where}; {torch.get_num_threads()} CPU threads, device {mm.get_torch_device()}")
        mp = build_flux(args.blocks, 1, dtype)
        if args.adapter == "xlabs":
            path, feature = os.path.join(tmp, "xlabs_v2_published.safetensors"), CLIP_L
            state = xlabs_state_dict(tokens=16, clip_dim=CLIP_L, ctx=CONTEXT, hidden=HIDDEN, blocks=args.blocks, seed=1)
            save_xlabs(path, {k: v.to(dtype) for k, v in state.items()})
            title, sites = "XLabs v2 (16 tokens, after each double block)", args.blocks
        else:
            path, feature = os.path.join(tmp, "instantx_published_blocks.safetensors"), 16
            image_proj, ip_adapter = instantx_parts(tokens=128, enc=feature, ctx=CONTEXT, hidden=HIDDEN,
                                                    sites=args.blocks + 1, seed=1, dtype=dtype)
            save_adapter(path, image_proj, ip_adapter)
            title, sites = "InstantX (128 tokens, inside the attention of every block)", args.blocks + 1
        adapter = pack.host.load_adapter(path)
        g = torch.Generator().manual_seed(2)
        cond = adapter.model.project(torch.randn(1, feature, generator=g).to(dtype)).float()
        uncond = adapter.model.project(torch.randn(1, feature, generator=g).to(dtype)).float()
        tokens = pack.embeds.ImageTokens(cond=cond, uncond=uncond, spec=adapter.spec, adapter_id=adapter.adapter_id,
                                         adapter_name=adapter.name)
        patched = pack.nodes["IPA_Apply"]().run(mp, adapter, 0.8, 0.0, 1.0, embeds=tokens)[0]
        latent = args.size // 8
        x = torch.randn(2, 16, latent, latent, generator=g).to(dtype)
        context = torch.randn(2, args.text, CONTEXT, generator=g).to(dtype)
        y, sigma, guidance = torch.randn(2, VEC, generator=g).to(dtype), torch.full((2,), 0.7), torch.full((2,), 3.5)

        def call(m: Any) -> torch.Tensor:
            options = dict(m.model_options.get("transformer_options", {}))
            options.update(cond_or_uncond=[1, 0], sigmas=sigma)
            with torch.inference_mode():
                return m.model.diffusion_model(x, sigma, context, y, guidance, transformer_options=options)

        mm.load_models_gpu([mp, patched, adapter.patcher])
        call(patched)  # cold: K'/V' of every block projected and cached
        counts = {}
        for label, m in (("unpatched", mp), ("patched", patched)):
            fc, oc = flop_counter(), OpCounter()
            with fc, oc:
                call(m)
            counts[label] = (oc, fc.get_total_flops())
        (u_ops, u_flops), (p_ops, p_flops) = counts["unpatched"], counts["patched"]
        img_tokens, ip_tokens = (latent // 2) ** 2, cond.shape[1]
        queries = img_tokens * args.blocks + (img_tokens + args.text) * (sites - args.blocks)  # double: image rows
        floor = 4 * 2 * HEADS * queries * ip_tokens * (HIDDEN // HEADS)
        added = p_ops.total - u_ops.total
        syncs = sum(p_ops.syncs.values()) - sum(u_ops.syncs.values())
        print(f"\n== {title} on {args.blocks} real-width Flux double blocks + 1 single block, {args.dtype}, "
              f"latent {latent}x{latent} ({img_tokens} image tokens), {args.text} text tokens, batch 2 (uncond, cond)")
        print(f"   unpatched warm call: {u_ops.total} aten ops, {u_flops / 1e9:.1f} GFLOP")
        print(f"   aten ops added: {added:+d} ({added / sites:+.1f} per patched block, {sites} blocks); host syncs added: "
              f"{syncs:+d}")
        print(f"   FLOPs added: {100.0 * (p_flops - u_flops) / u_flops:+.4f} % of the call; floor (the image "
              f"attention alone): {100.0 * floor / u_flops:+.4f} %")
        diff = p_ops.ops.copy()
        diff.subtract(u_ops.ops)
        print("   ops added by name: " + ", ".join(f"{k} {v:+d}" for k, v in diff.most_common() if v))
        print(f"   clone() of the patched model duplicates {duplicated_bytes(patched.model_options, patched.clone().model_options)} bytes")
        times = {"unpatched": [], "patched": []}
        for _ in range(args.rounds):
            for label, m in (("unpatched", mp), ("patched", patched)):
                start = time.perf_counter()
                call(m)
                times[label].append(time.perf_counter() - start)
        u, p = statistics.median(times["unpatched"]), statistics.median(times["patched"])
        print(f"   wall time of the warm call, median of {args.rounds} alternated: unpatched {u * 1e3:.0f} ms, "
              f"patched {p * 1e3:.0f} ms, patched/unpatched {p / u:.4f} (rounds: "
              + ", ".join(f"{a / b:.3f}" for a, b in zip(times["patched"], times["unpatched"])) + ")")
