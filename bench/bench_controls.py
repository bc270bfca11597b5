"""Per-step cost of the controls (issue #4) inside the real ComfyUI, on the real-shaped SD1.5 UNet with random weights.

Run ``python3 scripts/bench_controls.py --help``. Same harness as bench_step.py (one "step" = one model call of
``comfy.sample.sample``, euler, CFG 7; call 1 is the warm step), but every variant is built the way the control's node
builds it, through the pack's ``plan_for`` + ``install`` (nodes/patch/install.py) on zero-feature image tokens
(values do not change costs):

- IPA Apply (the reference point: every site, one term);
- IPA Apply (advanced) "style transfer": zero-weight sites get no patch;
- IPA Apply (advanced) "K+mean(V) w/ C penalty" + "ease in-out" schedule over 0.2..0.8 (folded into K'/V' and the
  per-step gate);
- attn_mask (left half);
- IPA Style & Composition (two terms, each on its own layers, as nodes/style_composition.py applies them);
- IPA Regional Apply with 2 and 4 regions (one masked term per region; IPA Apply (tiled) with N tiles is the same
  thing: N masked terms);
- unfold_batch + frame_weights on a latent batch of 2 (its own unpatched batch-2 reference).

For each: aten ops added per warm step, and per installed term (a term = one (adapter apply, site) pair), host syncs
added, FLOPs added, and the warm step's wall-clock ratio patched / unpatched (median of alternated replays).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from . import bench_step as bs
from .measure import StepProbe, probe_sampling


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=512, help="image size in pixels (latent size/8); default 512")
    ap.add_argument("--rounds", type=int, default=5, help="alternated replays per variant; default 5")
    args = ap.parse_args()
    where = bs.start_comfyui(["--use-pytorch-cross-attention"] if not torch.cuda.is_available() else [])
    import comfy.model_management as mm
    import comfy.sample
    import comfy.supported_models

    print(f"ComfyUI {where}; torch {torch.__version__}; device {mm.get_torch_device()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        pack = bs.load_pack(tmp)
        adapter = bs.make_adapters(pack, tmp, ("ip-adapter_sd15",))["ip-adapter_sd15"]
        tokens = bs.zero_tokens(pack, adapter)
        two = type(tokens)(cond=tokens.cond.repeat(2, 1, 1), uncond=tokens.uncond, spec=tokens.spec,
                           adapter_id=tokens.adapter_id, adapter_name=tokens.adapter_name)
        cuda = torch.cuda.is_available()
        mp = bs.build_unet(bs.SD15_UNET, comfy.supported_models.SD15, dtype=torch.float16 if cuda else torch.float32,
                           compute_dtype=None)
        h = w = args.size // 8
        left = torch.zeros(1, h * 8, w * 8)
        left[..., : w * 4] = 1.0
        quarters = [torch.zeros(1, h * 8, w * 8) for _ in range(4)]
        for i, q in enumerate(quarters):
            q[:, (i // 2) * h * 4:(i // 2 + 1) * h * 4, (i % 2) * w * 4:(i % 2 + 1) * w * 4] = 1.0

        def apply(model, toks=tokens, **kw):
            kw = {"weight": 1.0, "start_at": 0.0, "end_at": 1.0, **kw}
            plan = pack.install.plan_for(model, adapter, where="bench", **kw)
            return pack.install.install(model, adapter, toks, plan, where="bench")

        def chain(model, *steps):
            for kw in steps:
                model = apply(model, **kw)
            return model

        variants = {
            "IPA Apply": (1, lambda: apply(mp)),
            "style transfer": (1, lambda: apply(mp, weight_type="style transfer")),
            "K+mean(V), ease in-out .2-.8": (1, lambda: apply(mp, embeds_scaling="K+mean(V) w/ C penalty",
                                                              weight_schedule="ease in-out", start_at=0.2,
                                                              end_at=0.8)),
            "attn_mask (left half)": (1, lambda: apply(mp, attn_mask=left)),
            "style & composition": (1, lambda: chain(mp, {"weight_type": "style transfer",
                                                          "embeds_scaling": "K+V w/ C penalty"},
                                                     {"weight_type": "composition",
                                                      "embeds_scaling": "K+V w/ C penalty"})),
            "regional, 2 regions": (1, lambda: chain(mp, *({"attn_mask": quarters[i]} for i in range(2)))),
            "regional, 4 regions": (1, lambda: chain(mp, *({"attn_mask": q} for q in quarters))),
            "unfold + frame_weights": (2, lambda: apply(mp, toks=two, unfold_batch=True, frame_weights="1, 0.5")),
        }
        results = {}
        for batch in (1, 2):
            latent = torch.zeros(batch, 4, h, w)
            g = torch.Generator().manual_seed(3)
            positive = [[torch.randn(1, 77, 768, generator=g), {}]]
            negative = [[torch.randn(1, 77, 768, generator=g), {}]]

            def sample(m, latent=latent, positive=positive, negative=negative):
                comfy.sample.sample(m, comfy.sample.prepare_noise(latent, 42), 2, 7.0, "euler", "normal", positive,
                                    negative, latent, denoise=1.0, disable_pbar=True, seed=42)

            models = {"unpatched": mp}
            models.update({label: build() for label, (b, build) in variants.items() if b == batch})
            records = {label: probe_sampling(sample, m, StepProbe(flops=True, keep_call=True))
                       for label, m in models.items()}
            sync = torch.cuda.synchronize if cuda else (lambda: None)
            mm.load_models_gpu(list(models.values()) + [adapter.patcher])
            times = bs.replay({k: r[1].call for k, r in records.items()}, args.rounds, sync)
            u, u_time = records["unpatched"][1], statistics.median(t[0] for t in times["unpatched"])
            for label, m in models.items():
                if label == "unpatched":
                    continue
                attn2 = m.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
                terms = sum(len(p.terms) for p in attn2.values())
                p = records[label][1]
                added = p.total_ops - u.total_ops
                results[label] = (batch, terms, added, sum(bs.diff(p.syncs, u.syncs).values()),
                                  100.0 * (p.flops - u.flops) / u.flops,
                                  statistics.median(t[0] for t in times[label]) / u_time)
            bs.free(mm)
    print(f"\nSD1.5 {args.size}x{args.size}, 16 cross-attention sites, warm step, {args.rounds} alternated replays")
    print(f"{'variant':<32} {'batch':>5} {'terms':>5} {'ops added':>9} {'ops/term':>8} {'syncs':>5} "
          f"{'FLOPs added':>11} {'wall ratio':>10}")
    for label, (batch, terms, added, syncs, flops, ratio) in results.items():
        print(f"{label:<32} {batch:>5} {terms:>5} {added:>+9d} {added / max(terms, 1):>8.2f} {syncs:>+5d} "
              f"{flops:>+10.4f}% {ratio:>10.3f}")


if __name__ == "__main__":
    main()
