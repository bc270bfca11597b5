"""Host tests: a real ComfyUI, this pack loaded by ComfyUI's own custom-node loader, tiny models built in-process.

ComfyUI is found with ``scripts/comfyui_env.find_comfyui()`` (COMFYUI_PATH, the ComfyUI whose custom_nodes/ holds
this pack, or ~/ComfyUI). If none is found, every test under tests/host is skipped with the reason, and the reason is
printed in the report header (tests/conftest.py: only a conftest pytest loads before collecting can add to the
header) and the terminal summary: the host tests never disappear silently.

When ComfyUI is found, this module (at import, before any test module is collected):
- puts the ComfyUI folder at sys.path[0], so the top-level name ``nodes`` is ComfyUI's nodes.py and never this
  repository's own ``nodes/`` package;
- forces CPU (``comfy.cli_args.args.cpu = True`` before ``comfy.model_management`` is imported);
- sets ``torch.set_num_threads(1)`` (override with IPA_HOST_TEST_THREADS): the models are tiny, and on a shared
  2-core machine two intra-op threads made each sampling call 5-50x slower.
After loading the pack, the session fixture runs ``gc.collect(); gc.freeze()``: ComfyUI runs a full gc.collect()
whenever a sampled ModelPatcher clone has died (cleanup_models_gc), which otherwise walks every object of the
ComfyUI / torch imports each time (~0.3 s per sampling call).

Note: importing ComfyUI puts ``<ComfyUI>/comfy`` at sys.path[0] later on, so the top-level name ``utils`` is then
comfy/utils.py; load ComfyUI's own ``utils/`` modules by file path if a test needs them.

Test modules should not import ``comfy`` / ``nodes`` at module level (they would fail to collect where ComfyUI is
missing instead of being skipped); import inside tests or take the modules from fixtures.

Fixtures (names and signatures are stable; other host test modules use them)
---------------------------------------------------------------------------
Session scope:

``comfyui_path``
    str, the ComfyUI folder in use.
``comfy_nodes``
    ComfyUI's top-level ``nodes`` module, with this pack loaded (``NODE_CLASS_MAPPINGS`` holds the ``IPA_*`` ids).
``pack``
    This pack's package module exactly as ComfyUI loaded it: ``nodes.load_custom_node(<tmp>/comfyui_ip_adapter)``
    on a symlink to the repository root; its sys.modules name is that path with "." replaced by "_x_".
``pack_module(sub)``
    ``sys.modules[pack.__name__ + "." + sub]``, e.g. ``pack_module("nodes.patch.host")``,
    ``pack_module("ip_adapter_core.errors")`` (imported on demand). Use these, never a top-level ``nodes`` /
    ``ip_adapter_core`` import: the pack's classes (IPAttn2Patch, IPAdapterError, ...) live under the pack's name.
``run_node(node_id, **inputs)``
    Runs ``comfy_nodes.NODE_CLASS_MAPPINGS[node_id]`` as ComfyUI's executor does: a new instance, then its FUNCTION
    with keyword inputs. Every input name must be declared in INPUT_TYPES (else AssertionError). Returns what the
    node returns (a tuple, or a ``{"ui", "result"}`` dict).
``ipadapter_dir``
    A tmp folder registered for "ipadapter" with ``folder_paths.add_model_folder_path`` (after the pack registered
    the folder), so files written there are listed by IPA_ModelLoader.
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
"""
from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import json
import os
import sys

import pytest
import torch

HOST_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HOST_DIR))
if REPO not in sys.path:
    sys.path.append(REPO)
if os.path.dirname(HOST_DIR) not in sys.path:
    sys.path.append(os.path.dirname(HOST_DIR))

from scripts.comfyui_env import find_comfyui, host_skip_reason  # noqa: E402

COMFYUI_PATH, COMFYUI_HOW = find_comfyui()
SKIP_REASON = None if COMFYUI_PATH else host_skip_reason(COMFYUI_HOW)
PACK_LINK_NAME = "comfyui_ip_adapter"


def _prepare_comfyui(path: str) -> None:
    """ComfyUI first on sys.path, CPU forced before comfy.model_management is imported."""
    if sys.path[0] != path:
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
    bad = sys.modules.get("nodes")
    if bad is not None and not os.path.abspath(getattr(bad, "__file__", "") or "").startswith(path):
        raise RuntimeError(f"a module named 'nodes' was imported from {bad.__file__} before ComfyUI's; "
                           "the host tests need ComfyUI's nodes.py under that name")
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    torch.set_num_threads(int(os.environ.get("IPA_HOST_TEST_THREADS", "1")))
    if "comfy.model_management" in sys.modules:
        mm = sys.modules["comfy.model_management"]
        mm.cpu_state = mm.CPUState.CPU


if COMFYUI_PATH:
    _prepare_comfyui(COMFYUI_PATH)


# --------------------------------------------------------------------------------------------- loud skipping

def pytest_collection_modifyitems(config, items):
    if not SKIP_REASON:
        return
    marker = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if os.path.abspath(str(item.path)).startswith(HOST_DIR + os.sep):
            item.add_marker(marker)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if SKIP_REASON:
        terminalreporter.write_sep("!", SKIP_REASON, red=True, bold=True)


# --------------------------------------------------------------------------------------------- ComfyUI + the pack

@pytest.fixture(scope="session")
def comfyui_path() -> str:
    if not COMFYUI_PATH:
        pytest.skip(SKIP_REASON)
    return COMFYUI_PATH


@pytest.fixture(scope="session")
def _loaded(comfyui_path, tmp_path_factory):
    import nodes as comfy_nodes

    assert os.path.abspath(comfy_nodes.__file__).startswith(comfyui_path), comfy_nodes.__file__
    link = str(tmp_path_factory.mktemp("custom_nodes") / PACK_LINK_NAME)
    os.symlink(REPO, link)
    load = comfy_nodes.load_custom_node
    ok = asyncio.run(load(link)) if inspect.iscoroutinefunction(load) else load(link)
    assert ok, f"ComfyUI's load_custom_node({link}) failed; see the log above (IMPORT FAILED)"
    name = link.replace(".", "_x_")
    assert name in sys.modules, f"ComfyUI did not register the pack as {name}"
    for node_id in ("IPA_ModelLoader", "IPA_Encode", "IPA_Apply", "IPA_ApplySimple"):
        assert node_id in comfy_nodes.NODE_CLASS_MAPPINGS, f"{node_id} missing after loading the pack"
    gc.collect()
    gc.freeze()
    return comfy_nodes, sys.modules[name]


@pytest.fixture(scope="session")
def comfy_nodes(_loaded):
    return _loaded[0]


@pytest.fixture(scope="session")
def pack(_loaded):
    return _loaded[1]


@pytest.fixture(scope="session")
def pack_module(pack):
    import importlib

    def get(sub: str):
        name = f"{pack.__name__}.{sub}"
        return sys.modules[name] if name in sys.modules else importlib.import_module(name)

    return get


@pytest.fixture(scope="session")
def run_node(comfy_nodes):
    def run(node_id: str, **inputs):
        cls = comfy_nodes.NODE_CLASS_MAPPINGS[node_id]
        spec = cls.INPUT_TYPES()
        declared = {k for section in ("required", "optional", "hidden") for k in spec.get(section, {})}
        unknown = set(inputs) - declared
        assert not unknown, f"{node_id} has no inputs {sorted(unknown)} (declared: {sorted(declared)})"
        return getattr(cls(), cls.FUNCTION)(**inputs)

    return run


@pytest.fixture(scope="session")
def ipadapter_dir(pack, tmp_path_factory):
    import folder_paths

    assert "ipadapter" in folder_paths.folder_names_and_paths, "the pack did not register the ipadapter folder"
    d = tmp_path_factory.mktemp("ipadapter")
    folder_paths.add_model_folder_path("ipadapter", str(d))
    return d


# --------------------------------------------------------------------------------------------- tiny models

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
    import testkit.adapters as kit

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
def host(pack_module):
    """The pack's nodes.patch.host module (LoadedAdapter, load_adapter, model_sites, ...)."""
    return pack_module("nodes.patch.host")


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


# --------------------------------------------------------------------------------------------- real servers

REFERENCE_IMAGE = os.path.join(REPO, "example_workflows", "ipadapter_reference.png")


def _script(name: str):
    """A module of scripts/ under its top-level name, as the test modules and the scripts themselves import it."""
    import importlib

    scripts = os.path.join(REPO, "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    return importlib.import_module(name)


@pytest.fixture(scope="session")
def standins_dir(comfyui_path) -> str:
    """The random stand-in models of the example workflows (scripts/standins.py), generated in a child process
    (keeps comfy's model code out of this interpreter) and cached in <repo>/.standins/; returns that folder."""
    import subprocess

    standins = _script("standins")
    if not standins.is_fresh():
        subprocess.run([sys.executable, os.path.join(REPO, "scripts", "standins.py"), "--comfyui", comfyui_path],
                       check=True, timeout=900)
    return standins.DEFAULT_MODELS_DIR


@pytest.fixture(scope="module")
def standin_server(comfyui_path, standins_dir):
    """A real ComfyUI server (scripts/run_workflow.ComfyServer, --cpu) for the module, with this pack, the test helper
    nodes and the stand-ins as its model folders; the example's reference image is in its input folder."""
    ComfyServer = _script("run_workflow").ComfyServer
    with ComfyServer(comfyui_path, models_dir=standins_dir, helper_nodes=True, cpu=True, quiet=True) as srv:
        srv.copy_input(REFERENCE_IMAGE)
        yield srv
