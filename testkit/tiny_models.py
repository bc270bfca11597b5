"""pytest fixtures (a plugin, registered in tests/conftest.py): tiny models built in-process with ComfyUI's own
classes, for the host tests. They need tests/host/conftest.py's ``comfy_nodes`` / ``pack_module`` (ComfyUI imported,
the pack loaded), so only host tests can use them; this module imports no ComfyUI module itself.

Session scope (names and signatures are stable; the host test modules use them):

``make_sd15_model(seed=0, dtype=torch.float32)``
    -> ModelPatcher of a tiny SD1.5 model (comfy.supported_models.SD15, model_channels 32, channel_mult [1, 2],
    context 768, 8 heads, fp32, CPU, weights N(0, 0.05) from ``seed``). 7 cross-attention sites:
    ("input",1,0) 32, ("input",3,0) 64, ("middle",0,0) 64, ("output",0..1,0) 64, ("output",2..3,0) 32.
    Built once per seed; every call returns a fresh ``clone()`` (own model_options, shared weights).
``make_sdxl_model(seed=0)``
    -> ModelPatcher of a tiny SDXL-shaped model (comfy.supported_models.SDXL / model_base.SDXL: context 2048,
    adm_in_channels 2816, num_classes "sequential", linear proj_in, 64-channel heads, model_channels 64,
    channel_mult [1, 2]; transformer depth 1 at level 0 and 2 at level 1 and in the middle block), so sites are
    (block, id, t) with t in {0, 1}: 11 sites. Sampling it needs ``pooled_output`` (1, 1280); ``sample`` adds it.
    Same caching as make_sd15_model.
``make_clip_vision(hidden=48, proj=40, seed=0)``
    -> comfy.clip_vision.ClipVisionModel from a JSON config (3 layers, 4 heads, patch 8, 32 px, gelu,
    intermediate 2*hidden), weights N(0, 0.05) from ``seed``. image_embeds are (B, proj); penultimate states
    (B, 17, hidden). Cached: the same arguments return the same object.
``make_adapter_file(directory, kind, model, clip_vision, *, name=None, seed=0, tokens=None, resampler_dim=64,
resampler_heads=1, depth=4, fmt="safetensors", site_dims=None, ctx=None, dtype=torch.float32)``
    -> path of a random adapter (published key layout, testkit.adapters.adapter_parts) whose to_k_ip/to_v_ip
    widths match ``model``'s sites (host.model_sites) and context width, and whose projection reads
    ``clip_vision``'s image_embeds (kind "base") or penultimate states ("plus", "full_face"). tokens defaults to
    4 (base) / 8 (plus). ``site_dims`` / ``ctx`` override the model's (for mismatch tests). fmt "bin" writes
    the nested torch.save layout. The default name encodes kind, seed and model shape, so equal requests reuse
    one file (and the loader's cache).
``make_image(seed=0, batch=1, height=40, width=36, channels=3)``
    -> IMAGE tensor (B, H, W, C) in 0..1, deterministic per arguments.
``make_conds(model, seed=1, batch=1)``
    -> ComfyUI conditioning ``[[context (batch, 77, ctx), {...}]]`` for ``model`` (adds pooled_output for SDXL).
``sample(model, *, steps=3, cfg=5.0, seed=42, batch=1, size=8, positive=None, negative=None, sampler="euler",
scheduler="normal", latent=None, noise=None, **kw)``
    -> latent (batch, 4, size, size) from ``comfy.sample.sample`` with fixed noise (``prepare_noise(latent, seed)``)
    and fixed conditionings (``make_conds(model, 1)`` / ``make_conds(model, 2)`` unless given). Extra keywords go to
    comfy.sample.sample (start_step, last_step, force_full_denoise, disable_noise, ...).

Small shared ones: ``cv`` (the default tiny CLIP vision), ``sd15`` / ``sdxl`` (a clone of the seed-0 model, one per
test module), ``attn2_patches(model)``, ``call_site(model, key, ...)``, ``base_adapter`` / ``base_embeds`` (a random
base adapter for sd15 and cv, and IPA_Encode of make_image(0) with it).
"""
from __future__ import annotations

import functools
import json
import os

import pytest
import torch

from . import adapters as kit


def _randomise(module: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    """comfy.ops leaves weights uninitialised: fill every parameter from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * std).to(p.dtype))


SD15_UNET = dict(
    use_checkpoint=False, image_size=32, use_spatial_transformer=True, legacy=False, adm_in_channels=None,
    in_channels=4, out_channels=4, model_channels=32, num_res_blocks=[1, 1], transformer_depth=[1, 1],
    transformer_depth_output=[1, 1, 1, 1], channel_mult=[1, 2], transformer_depth_middle=1,
    use_linear_in_transformer=False, context_dim=768, use_temporal_resblock=False, use_temporal_attention=False,
)
SDXL_UNET = dict(
    use_checkpoint=False, image_size=32, use_spatial_transformer=True, legacy=False, adm_in_channels=2816,
    num_classes="sequential", in_channels=4, out_channels=4, model_channels=64, num_res_blocks=[1, 1],
    transformer_depth=[1, 2], transformer_depth_output=[1, 1, 2, 2], channel_mult=[1, 2], transformer_depth_middle=2,
    use_linear_in_transformer=True, context_dim=2048, use_temporal_resblock=False, use_temporal_attention=False,
)


def build_model(config_class, unet_config: dict, seed: int, dtype: torch.dtype = torch.float32):
    """A ModelPatcher over ``config_class(unet_config).get_model`` with seeded random weights (``dtype``) on the CPU."""
    import comfy.model_management as mm
    import comfy.model_patcher

    cfg = config_class(unet_config)
    cfg.set_inference_dtype(dtype, None)
    model = cfg.get_model({}, "")
    _randomise(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def _model_factory(config_name: str, unet_config: dict):
    import comfy.supported_models

    cls = getattr(comfy.supported_models, config_name)

    @functools.lru_cache(maxsize=None)
    def base(seed: int, dtype: torch.dtype):
        return build_model(cls, unet_config, seed, dtype)

    def make(seed: int = 0, dtype: torch.dtype = torch.float32):
        return base(seed, dtype).clone()

    return make


@pytest.fixture(scope="session")
def make_sd15_model(comfy_nodes):
    return _model_factory("SD15", SD15_UNET)


@pytest.fixture(scope="session")
def make_sdxl_model(comfy_nodes):
    return _model_factory("SDXL", SDXL_UNET)


@pytest.fixture(scope="session")
def make_clip_vision(comfy_nodes, tmp_path_factory):
    import comfy.clip_vision

    folder = tmp_path_factory.mktemp("clip_vision")

    @functools.lru_cache(maxsize=None)
    def make(hidden: int = 48, proj: int = 40, seed: int = 0):
        config = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=4, num_hidden_layers=3,
                      patch_size=8, image_size=32, projection_dim=proj, hidden_act="gelu", layer_norm_eps=1e-5,
                      num_channels=3, model_type="clip_vision_model", attention_dropout=0.0, dropout=0.0)
        path = folder / f"tiny_h{hidden}_p{proj}.json"
        path.write_text(json.dumps(config))
        cv = comfy.clip_vision.ClipVisionModel(str(path))
        _randomise(cv.model, seed)
        return cv

    return make


@pytest.fixture(scope="session")
def make_adapter_file(pack_module):
    host = pack_module("nodes.patch.host")

    def make(directory, kind: str, model, clip_vision, *, name: str | None = None, seed: int = 0,
             tokens: int | None = None, resampler_dim: int = 64, resampler_heads: int = 1, depth: int = 4,
             fmt: str = "safetensors", site_dims=None, ctx: int | None = None,
             dtype: torch.dtype = torch.float32) -> str:
        if site_dims is None:
            site_dims = [s.hidden for s in host.model_sites(model)]
        if ctx is None:
            ctx = host.model_context_dim(model)
        dims = host.clip_vision_dims(clip_vision)
        encoder_dim = dims.projection if kind == "base" else dims.hidden
        if tokens is None:
            tokens = {"base": 4, "plus": 8}.get(kind)
        image_proj, ip_adapter = kit.adapter_parts(
            kind, ctx=ctx, encoder_dim=encoder_dim, site_dims=list(site_dims), tokens=tokens,
            resampler_dim=resampler_dim, resampler_heads=resampler_heads, depth=depth, dtype=dtype, seed=seed)
        if name is None:
            shape = "-".join(str(d) for d in site_dims)
            name = f"{kind}_s{seed}_c{ctx}_e{encoder_dim}_t{tokens}_{shape}_{str(dtype)[6:]}.{fmt}"
        path = os.path.join(str(directory), name)
        if not os.path.exists(path):
            kit.save_adapter(path, image_proj, ip_adapter, fmt="bin" if fmt == "bin" else "safetensors")
        return path

    return make


@pytest.fixture(scope="session")
def make_image():
    def make(seed: int = 0, batch: int = 1, height: int = 40, width: int = 36, channels: int = 3) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.rand(batch, height, width, channels, generator=g)

    return make


def _context_dim(model) -> int:
    return int(model.model.model_config.unet_config["context_dim"])


@pytest.fixture(scope="session")
def make_conds(comfy_nodes):
    def make(model, seed: int = 1, batch: int = 1):
        g = torch.Generator().manual_seed(seed)
        ctx = _context_dim(model)
        extra = {}
        if ctx == 2048:
            extra["pooled_output"] = torch.randn(batch, 1280, generator=g)
        return [[torch.randn(batch, 77, ctx, generator=g), extra]]

    return make


@pytest.fixture(scope="session")
def sample(make_conds):
    import comfy.sample

    def run(model, *, steps: int = 3, cfg: float = 5.0, seed: int = 42, batch: int = 1, size: int = 8,
            positive=None, negative=None, sampler: str = "euler", scheduler: str = "normal", latent=None, noise=None,
            **kw) -> torch.Tensor:
        if latent is None:
            latent = torch.zeros(batch, 4, size, size)
        if noise is None:
            noise = comfy.sample.prepare_noise(latent, seed)
        positive = positive if positive is not None else make_conds(model, 1)
        negative = negative if negative is not None else make_conds(model, 2)
        with torch.no_grad():
            return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                                       denoise=1.0, disable_pbar=True, seed=seed, **kw)

    return run


@pytest.fixture(scope="session")
def cv(make_clip_vision):
    """The default tiny CLIP vision (hidden 48, projection 40)."""
    return make_clip_vision()


@pytest.fixture(scope="module")
def sd15(make_sd15_model):
    """A clone of the tiny SD1.5 model (seed 0), one per test module (applies never change it)."""
    return make_sd15_model(0)


@pytest.fixture(scope="module")
def sdxl(make_sdxl_model):
    """A clone of the tiny SDXL-shaped model (seed 0), one per test module."""
    return make_sdxl_model(0)


@pytest.fixture(scope="session")
def attn2_patches():
    """attn2_patches(model) -> the model's {key: patch} attn2 replace dict."""
    return lambda model: model.model_options["transformer_options"]["patches_replace"]["attn2"]


@pytest.fixture(scope="session")
def call_site(host, attn2_patches):
    """call_site(model, key, *, tokens=64, sigma=14.6, heads=8, seed=3, **extra) -> (out, plain attention).

    Calls the attn2 patch installed at ``key`` directly, as BasicTransformerBlock does, with random q/k/v for a cond
    and an uncond chunk (cond_or_uncond [1, 0]) of an 8x8 latent; ``extra`` adds or overrides extra_options
    (e.g. sample_sigmas). ``plain`` is ComfyUI's own attention of the same q/k/v, i.e. the unpatched output."""
    from comfy.ldm.modules.attention import optimized_attention

    def call(model, key, *, tokens=64, sigma=14.6, heads=8, seed=3, **extra):
        site = next(s for s in host.model_sites(model) if s.key == key)
        g = torch.Generator().manual_seed(seed)
        q, k, v = (torch.randn(2, n, site.hidden, generator=g) for n in (tokens, 77, 77))
        options = {"n_heads": heads, "dim_head": site.hidden // heads, "attn_precision": None,
                   "cond_or_uncond": [1, 0], "sigmas": torch.full((2,), float(sigma)), "original_shape": [2, 4, 8, 8],
                   "block": key[:2], "block_index": key[2], **extra}
        return attn2_patches(model)[key](q, k, v, options), optimized_attention(q, k, v, heads)

    return call


@pytest.fixture(scope="module")
def base_adapter(make_adapter_file, sd15, cv, host, tmp_path_factory):
    """A random base adapter for the tiny SD1.5 model and the default tiny CLIP vision (seed 0), loaded."""
    return host.load_adapter(make_adapter_file(tmp_path_factory.mktemp("base_adapter"), "base", sd15, cv, seed=0))


@pytest.fixture(scope="module")
def base_embeds(base_adapter, run_node, cv, make_image):
    """IPA_Encode of make_image(0) with base_adapter."""
    return run_node("IPA_Encode", ipadapter=base_adapter, clip_vision=cv, image=make_image(0))[0]
