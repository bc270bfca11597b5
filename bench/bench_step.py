"""Per-step cost of the IP-Adapter patch inside the real ComfyUI, on real-shaped models with random weights.

Run ``python3 scripts/bench_step.py --help``; what each figure means is in bench/README.md.

What one "step" is here: one call of the model function during ``comfy.sample.sample`` (euler, CFG 7), i.e. one
``BaseModel.apply_model`` call on the cond + uncond batch with the ``transformer_options`` the sampler built from the
(patched or unpatched) ModelPatcher. It is observed through ComfyUI's ``model_function_wrapper`` hook, so the call
and its options are exactly what sampling runs. Call 0 is the cold step (per-site K'/V' caches empty), call 1 the warm
step. Wall times replay the captured warm call, patched and unpatched alternated.

The measurement tools (bench/measure.py) import no ComfyUI module; tests/host/test_cost.py counts with them too.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import statistics
import sys
import tempfile
import time
import types
from collections import Counter
from typing import Any, Callable, Iterable

import torch

from testkit import adapters as kit
from testkit.comfyui_env import REPO, find_comfyui, import_comfyui

from .measure import StepProbe, duplicated_bytes, module_bytes, probe_sampling, tensor_storages

# ------------------------------------------------------------------------------------------- ComfyUI set-up

SD15_UNET = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                 adm_in_channels=None, in_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
                 transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], channel_mult=[1, 2, 4, 4], transformer_depth_middle=1,
                 use_linear_in_transformer=False, context_dim=768, num_heads=8,
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                 use_temporal_attention=False, use_temporal_resblock=False)
SDXL_UNET = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                 num_classes="sequential", adm_in_channels=2816, in_channels=4, model_channels=320,
                 num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, 2, 2, 10, 10], channel_mult=[1, 2, 4],
                 transformer_depth_middle=10, use_linear_in_transformer=True, context_dim=2048, num_head_channels=64,
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                 use_temporal_attention=False, use_temporal_resblock=False)


def start_comfyui(extra_args: list[str]) -> str:
    """Import ComfyUI (found like the tests find it) with ``extra_args`` as its command line."""
    path, how = find_comfyui()
    if path is None:
        sys.exit(f"bench: {how}")
    import_comfyui(path)
    if not torch.cuda.is_available() and "--cpu" not in extra_args:
        extra_args = extra_args + ["--cpu"]
    sys.argv = [sys.argv[0]] + extra_args
    import comfy.options

    comfy.options.enable_args_parsing()
    return f"{path} ({how})"


def load_pack(tmp: str) -> types.SimpleNamespace:
    """Load this pack with ComfyUI's own custom-node loader; return its node classes and the modules the benches
    use, reached as attributes of the package ComfyUI imported."""
    import nodes as comfy_nodes

    root = os.path.join(tmp, "custom_nodes")
    os.makedirs(root, exist_ok=True)
    link = os.path.join(root, "comfyui_ip_adapter")
    os.symlink(REPO, link)
    result = comfy_nodes.load_custom_node(link)
    if asyncio.iscoroutine(result):
        result = asyncio.run(result)
    if not result:
        sys.exit("bench: ComfyUI could not import the pack (see the log above)")
    package = sys.modules[link.replace(".", "_x_")]  # the module name ComfyUI's loader gives a custom-node folder
    patch = package.nodes.patch
    return types.SimpleNamespace(nodes=comfy_nodes.NODE_CLASS_MAPPINGS, host=patch.host, install=patch.install,
                                 encoder=patch.encoder, embeds=package.ip_adapter_core.embeds)


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Weights ~ N(0, 1/fan_in), norm scales 1, biases 0 (comfy.ops leaves parameters uninitialised)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g).mul_(fan_in ** -0.5))
            else:  # copy_ rather than fill_: fill_ has no fp8 kernel
                p.copy_(torch.ones(p.shape) if name.endswith("weight") else torch.zeros(p.shape))


def build_unet(config: dict, cfg_class: Any, *, dtype: torch.dtype, compute_dtype: torch.dtype | None) -> Any:
    """A real-shaped UNet ModelPatcher with random weights, built by ComfyUI's own model classes."""
    import comfy.model_management as mm
    import comfy.model_patcher

    cfg = cfg_class(dict(config, dtype=dtype))
    cfg.set_inference_dtype(dtype, compute_dtype)
    model = cfg.get_model({}, "")
    randomise(model.diffusion_model)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def build_clip_vision(kind: str, tmp: str) -> tuple[Any, str]:
    """ViT-H/14 (ComfyUI's own config, 632 M parameters) or a 4-layer model of the same widths."""
    import json

    import comfy.clip_vision

    path = os.path.join(os.path.dirname(comfy.clip_vision.__file__), "clip_vision_config_h.json")
    label = "ViT-H/14 (32 layers, 1280 wide, 224 px)"
    if kind == "small":
        with open(path) as f:
            config = dict(json.load(f), num_hidden_layers=4)
        path = os.path.join(tmp, "clip_vision_small.json")
        with open(path, "w") as f:
            json.dump(config, f)
        label = "ViT-H widths with 4 layers instead of 32 (--clip small)"
    cv = comfy.clip_vision.ClipVisionModel(path)
    randomise(cv.model, seed=1)
    return cv, label


def make_adapters(pack: Any, tmp: str, names: Iterable[str], dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    """Random adapters in the exact published layout (testkit/adapters.py), saved and loaded like real files."""
    out = {}
    for name in names:
        path = os.path.join(tmp, f"{name}.safetensors")
        kit.save_adapter(path, *kit.published(name, device="cpu", dtype=dtype))
        out[name] = pack.host.load_adapter(path)
    return out


def attn2_inputs(diffusion_model: torch.nn.Module) -> tuple[list, list]:
    """Forward hooks on every cross-attention module recording (B, Nq, C) of its input; (hooks, shapes)."""
    from comfy.ldm.modules.attention import BasicTransformerBlock

    shapes: list = []
    hooks = [blk.attn2.register_forward_pre_hook(lambda mod, args, kwargs: shapes.append(tuple(args[0].shape)),
                                                 with_kwargs=True)
             for blk in diffusion_model.modules() if isinstance(blk, BasicTransformerBlock) and blk.attn2 is not None]
    return hooks, shapes


# ------------------------------------------------------------------------------------------- the benchmark

Variant = tuple  # (label, adapter name, start_at, end_at)


def diff(a: Counter, b: Counter) -> Counter:
    d = Counter(a)
    d.subtract(b)
    return Counter({k: v for k, v in d.items() if v})


def fmt_counter(c: Counter, n: int = 10) -> str:
    return ", ".join(f"{k.removeprefix('aten.')} {v:+d}" for k, v in c.most_common(n)) or "none"


def mib(n: float) -> str:
    return f"{n / 2 ** 20:.1f} MiB"


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def replay(calls: dict[str, tuple], rounds: int, sync: Callable[[], None]) -> dict[str, list[tuple[float, float]]]:
    """Replay each captured model call ``rounds`` times, the variants alternated (the order rotates every round so
    none is always first): (wall, process CPU) seconds."""
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in calls}
    names = list(calls)
    with torch.inference_mode():
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                fn, x, t, c = calls[name]
                sync()
                wall, cpu = time.perf_counter(), time.process_time()
                fn(x, t, **c)
                sync()
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def bench_model(args, pack, title: str, mp: Any, adapters: dict, tokens: dict, variants: list[Variant],
                latent: torch.Tensor, say: Callable) -> None:
    """Counts, memory and wall ratios of every variant against the unpatched ``mp``."""
    import comfy.model_management as mm
    import comfy.sample
    from comfy.ldm.modules import attention as host_attention

    context_dim = pack.host.model_context_dim(mp)
    g = torch.Generator().manual_seed(3)
    extra = {"pooled_output": torch.randn(1, 1280, generator=g)} if context_dim == 2048 else {}
    positive = [[torch.randn(1, 77, context_dim, generator=g), extra]]
    negative = [[torch.randn(1, 77, context_dim, generator=g), extra]]

    def sample(m):
        comfy.sample.sample(m, comfy.sample.prepare_noise(latent, 42), 2, 7.0, "euler", "normal", positive, negative,
                            latent, denoise=1.0, disable_pbar=True, seed=42)

    apply = pack.nodes["IPA_Apply"]()
    models = {"unpatched": mp}
    for label, name, start, end in variants:
        models[label] = apply.run(mp, adapters[name], 1.0, start, end, embeds=tokens[name])[0]
    n_sites = len(pack.host.model_sites(mp))
    say(f"\n== {title}: {n_sites} cross-attention sites, latent {tuple(latent.shape)}, UNet weights "
        f"{mp.model.get_dtype()}, attention kernel ComfyUI chose: {host_attention.optimized_attention.__name__}")

    hooks, shapes = attn2_inputs(mp.model.diffusion_model)
    records = {"unpatched": probe_sampling(sample, mp, StepProbe(flops=True, keep_call=True))}
    for h in hooks:
        h.remove()
    for label, name, *_ in variants:
        weights = [p for site in adapters[name].model.sites for p in site.parameters()]
        records[label] = probe_sampling(sample, models[label], StepProbe(flops=True, watch=weights, keep_call=True))
    u_warm = records["unpatched"][1]
    say(f"   one step = one model call on batch {u_warm.batch} (cond+uncond, CFG 7, chunks {u_warm.cond_or_uncond}); "
        f"unpatched warm step: {u_warm.total_ops} aten ops, {u_warm.flops / 1e9:.2f} GFLOP")
    say(f"   {'':<27} {'step':<5} {'aten ops added':>17} {'syncs':>6} {'FLOPs added':>12} {'floor':>10} "
        f"{'diff (pp)':>10} {'K/V weight reads':>17}")
    attn_inputs = shapes[-n_sites:]  # (B, Nq, C) of each site in the unpatched warm step
    details = []
    for label, name, *_ in variants:
        image_tokens = tokens[name].cond.shape[0] * tokens[name].cond.shape[1]
        floor = sum(4 * b * nq * c * image_tokens for b, nq, c in attn_inputs)
        for step, when in ((1, "warm"), (0, "cold")):
            p, u = records[label][step], records["unpatched"][step]
            added = p.total_ops - u.total_ops
            syncs = diff(p.syncs, u.syncs)
            pct, floor_pct = 100.0 * (p.flops - u.flops) / u.flops, 100.0 * floor / u.flops
            say(f"   {label if step else '':<27} {when:<5} {added:>+8d} ({added / n_sites:+5.1f}/site) "
                f"{sum(syncs.values()):>+6d} {pct:>+11.4f}% {floor_pct:>+9.4f}% {pct - floor_pct:>+10.4f} "
                f"{sum(p.watched.values()):>17d}")
            details.append(f"   {label}, {when}: ops added [{fmt_counter(diff(p.ops, u.ops))}]"
                           + (f"; syncs added [{fmt_counter(syncs)}]" if syncs else ""))
    for line in details:
        say(line)
    say("   cold-step rows include the one-off K'/V' projection of every site (cached for later steps and runs)")

    for label, name, *_ in variants[:2]:
        weights = module_bytes(adapters[name].model)
        held = tensor_storages(models[label].model_options)
        held_w = sum(n for k, n in held.items() if k in weights)
        dup = duplicated_bytes(models[label].model_options, models[label].clone().model_options)
        say(f"   {label}: model_options hold {mib(held_w)} of adapter weights (the file's: {mib(sum(weights.values()))}) "
            f"+ {mib(sum(held.values()) - held_w)} tokens and K'/V' caches; clone() duplicates {dup} bytes")
    label, name, *_ = variants[0]
    twice = apply.run(models[label], adapters[name], 0.5, 0.0, 1.0, embeds=tokens[name])[0]
    weights = module_bytes(adapters[name].model)
    held = tensor_storages(twice.model_options)
    owners = {id(m) for patch in twice.model_options["transformer_options"]["patches_replace"]["attn2"].values()
              for m in patch.models()}
    say(f"   two applies of {name} on one model: adapter weights held "
        f"{mib(sum(n for k, n in held.items() if k in weights))}; models() of all {n_sites} patches = "
        f"{'the adapter' if owners == {id(adapters[name].patcher)} else 'OTHER'}'s own ModelPatcher; "
        f"clone() duplicates {duplicated_bytes(twice.model_options, twice.clone().model_options)} bytes")

    dev = mm.get_torch_device()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    calls = {key: recs[1].call for key, recs in records.items()}
    mm.load_models_gpu(list(models.values()) + [a.patcher for a in adapters.values()])
    times = replay(calls, args.rounds, sync)
    kinds = ((0, "wall"),) if dev.type == "cuda" else ((0, "wall"), (1, "process CPU"))
    for i, kind in kinds:
        u = [r[i] for r in times["unpatched"]]
        say(f"   {kind} time of the warm step on {dev} ({mp.model.get_dtype()}), median of {args.rounds} alternated "
            f"replays: unpatched {statistics.median(u) * 1e3:.1f} ms")
        for label, *_ in variants:
            p = [r[i] for r in times[label]]
            say(f"   {label:<27} {statistics.median(p) * 1e3:.1f} ms, patched/unpatched "
                f"{statistics.median(p) / statistics.median(u):.4f} (rounds: {', '.join(f'{a / b:.3f}' for a, b in zip(p, u))})")
    say(f"   peak RSS so far {rss_gb():.2f} GB")


def bench_encode(args, pack, adapters: dict, clip_vision: Any, clip_label: str, say: Callable) -> dict:
    """IPA Encode Image (CLIP vision + projection) of 1 and 16 images per adapter; returns the 1-image tokens."""
    encode = pack.nodes["IPA_Encode"]()
    g = torch.Generator().manual_seed(5)
    images = {n: torch.rand(n, 512, 512, 3, generator=g) for n in (1, 16)}
    say(f"\n== encode: IPA Encode Image on 512x512 images, CLIP vision {clip_label}, fp32, "
        f"{torch.get_num_threads()} CPU threads")
    tokens = {}
    with torch.inference_mode():
        for name, adapter in adapters.items():
            tokens[name] = encode.run(adapter, clip_vision, images[1])[0]  # warm-up; caches the uncond tokens
            for n in (1, 16):
                runs = args.encode_rounds if n == 1 else 1
                secs = []
                for _ in range(runs):
                    start = time.perf_counter()
                    encode.run(adapter, clip_vision, images[n])
                    secs.append(time.perf_counter() - start)
                say(f"   {name:<22} {n:>2} image(s): {statistics.median(secs):7.2f} s (median of {runs})")
    return tokens


def zero_tokens(pack: Any, adapter: Any) -> Any:
    """Image tokens of an all-zero CLIP feature (shapes and costs only; no encoder)."""
    embeds = pack.embeds
    spec = adapter.spec
    shape = (1, spec.encoder_dim) if spec.encoder_input == "image_embeds" else (1, 257, spec.encoder_dim)
    cond = adapter.model.project(torch.zeros(shape)).float()
    return embeds.ImageTokens(cond=cond, uncond=cond, spec=spec, adapter_id=adapter.adapter_id,
                              adapter_name=adapter.name)


def free(mm: Any) -> None:
    mm.unload_all_models()
    mm.cleanup_models()
    gc.collect()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=512, help="SD1.5 image size in pixels (latent size/8); default 512")
    ap.add_argument("--batch", default=None, help="latent batch sizes, comma separated (default 1; 1,4 on CUDA)")
    ap.add_argument("--rounds", type=int, default=None, help="alternated replays per variant (default 3; 7 on CUDA)")
    ap.add_argument("--encode-rounds", type=int, default=3, help="repeats of the 1-image encode")
    ap.add_argument("--clip", choices=("vit-h", "small"), default="vit-h",
                    help="CLIP vision for the encode times: ViT-H/14 (2.5 GB fp32) or the same widths with 4 layers")
    ap.add_argument("--skip-encode", action="store_true", help="no encode times; tokens from zero CLIP features")
    ap.add_argument("--sdxl", action="store_true", help="also SDXL (fp8 weight storage, ~2.6 GB; measured last)")
    ap.add_argument("--no-sd15", action="store_true", help="skip the SD1.5 UNet (e.g. with --sdxl --skip-encode)")
    ap.add_argument("--sdxl-size", type=int, default=512, help="SDXL image size in pixels; default 512")
    ap.add_argument("--comfy-args", default=None,
                    help="ComfyUI command line; default on CPU '--use-pytorch-cross-attention' (ComfyUI's CUDA default: "
                         "its CPU default, sub-quadratic attention, holds ~2 GB of scores per 512 px self-attention), "
                         "on CUDA none. Pass '' for ComfyUI's own choice")
    args = ap.parse_args()

    if args.comfy_args is None:
        args.comfy_args = "" if torch.cuda.is_available() else "--use-pytorch-cross-attention"
    where = start_comfyui(args.comfy_args.split())
    import comfy.model_management as mm
    import comfy.supported_models

    def say(line: str) -> None:
        print(line, flush=True)

    dev = mm.get_torch_device()
    cuda = dev.type == "cuda"
    batches = [int(b) for b in (args.batch or ("1,4" if cuda else "1")).split(",")]
    args.rounds = args.rounds or (7 if cuda else 3)
    say(f"ComfyUI {where}, arguments '{' '.join(sys.argv[1:])}'; torch {torch.__version__}; device {dev}")
    with tempfile.TemporaryDirectory() as tmp:
        pack = load_pack(tmp)
        adapters = {} if args.no_sd15 and args.skip_encode else \
            make_adapters(pack, tmp, ("ip-adapter_sd15", "ip-adapter-plus_sd15"))
        if args.skip_encode:
            tokens = {n: zero_tokens(pack, a) for n, a in adapters.items()}
        else:
            clip_vision, label = build_clip_vision(args.clip, tmp)
            tokens = bench_encode(args, pack, adapters, clip_vision, label, say)
            del clip_vision
            free(mm)
        variants = [("base (start 0, end 1)", "ip-adapter_sd15", 0.0, 1.0),
                    ("plus (start 0, end 1)", "ip-adapter-plus_sd15", 0.0, 1.0),
                    ("base (start 0.2, end 0.8)", "ip-adapter_sd15", 0.2, 0.8)]
        if not args.no_sd15:
            mp = build_unet(SD15_UNET, comfy.supported_models.SD15, dtype=torch.float16 if cuda else torch.float32,
                            compute_dtype=None)
            for b in batches:
                bench_model(args, pack, f"SD1.5 {args.size}x{args.size}, batch {b}", mp, adapters, tokens, variants,
                            torch.zeros(b, 4, args.size // 8, args.size // 8), say)
            del mp
            free(mm)
        if args.sdxl:
            xl = make_adapters(pack, tmp, ("ip-adapter_sdxl_vit-h", "ip-adapter-plus_sdxl_vit-h"))
            mp = build_unet(SDXL_UNET, comfy.supported_models.SDXL, dtype=torch.float8_e4m3fn,
                            compute_dtype=torch.float16 if cuda else torch.float32)
            bench_model(args, pack, f"SDXL {args.sdxl_size}x{args.sdxl_size}, batch 1, fp8 weights", mp, xl,
                        {n: zero_tokens(pack, a) for n, a in xl.items()},
                        [("base (start 0, end 1)", "ip-adapter_sdxl_vit-h", 0.0, 1.0),
                         ("plus (start 0, end 1)", "ip-adapter-plus_sdxl_vit-h", 0.0, 1.0)],
                        torch.zeros(1, 4, args.sdxl_size // 8, args.sdxl_size // 8), say)
    say(f"\npeak RSS {rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
