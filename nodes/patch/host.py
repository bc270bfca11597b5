"""Everything else that touches ComfyUI internals: model management, UNet inspection, sigmas, CLIP vision."""
from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
import comfy.clip_vision
import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
from comfy.ldm.modules.attention import SpatialTransformer

from ...ip_adapter_core import families
from ...ip_adapter_core.checkpoint import file_key, load_adapter_parts
from ...ip_adapter_core.embeds import fingerprint
from ...ip_adapter_core.errors import InputError
from ...ip_adapter_core.projection import IPAdapterModel
from ...ip_adapter_core.sites import Site, checkpoint_order
from ...ip_adapter_core.spec import AdapterSpec, detect_spec


@dataclass(eq=False)
class LoadedAdapter:
    """One adapter file, loaded once and shared by every node and model that uses it (payload of IPA_ADAPTER).

    patcher: a ModelPatcher over ``model``, so ComfyUI loads and offloads the weights with the UNet.
    lora: the file's LoRA tensors (FaceID; the file's own tensors, not copies), empty for most adapters.
    """

    name: str
    spec: AdapterSpec
    adapter_id: str
    model: IPAdapterModel
    patcher: Any
    lora: dict = field(default_factory=dict)

    def __deepcopy__(self, memo: dict) -> "LoadedAdapter":
        return self


_cache: "weakref.WeakValueDictionary[tuple, LoadedAdapter]" = weakref.WeakValueDictionary()
_cache_lock = threading.Lock()


def load_adapter(path: str) -> LoadedAdapter:
    """Load (or reuse) the adapter at ``path``; cached by real path, size and modification time."""
    key = file_key(path)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            return hit
        name = os.path.basename(path)
        parts = load_adapter_parts(path)
        spec = detect_spec(parts.image_proj, parts.ip_adapter, name=f"'{name}'")
        load_model = families.family_of(spec).load_model or IPAdapterModel.from_parts
        model = load_model(spec, parts.image_proj, parts.ip_adapter, name=f"'{name}'")
        patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                                   offload_device=mm.unet_offload_device())
        adapter = LoadedAdapter(name=name, spec=spec, adapter_id=fingerprint({**parts.image_proj, **parts.ip_adapter}),
                                model=model, patcher=patcher,
                                lora={k: v for k, v in parts.ip_adapter.items() if "_lora." in k})
        _cache[key] = adapter
        return adapter


def projection_device(adapter: LoadedAdapter) -> torch.device:
    """Load the adapter through ComfyUI's model management and return where its weights now live."""
    mm.load_model_gpu(adapter.patcher)
    return next(adapter.model.parameters()).device


# ---------------------------------------------------------------------------------------------- the diffusion model

def transformer_blocks(model_patcher: Any):
    """Every BasicTransformerBlock of a UNet's SpatialTransformers: (block, block_id, index, state-dict path, module),
    in the model's own order; nothing for models without UNet blocks (DiTs)."""
    dm = model_patcher.get_model_object("diffusion_model")
    groups = [("input", i, f"input_blocks.{i}", b) for i, b in enumerate(getattr(dm, "input_blocks", []))]
    if getattr(dm, "middle_block", None) is not None:
        groups.append(("middle", 0, "middle_block", dm.middle_block))
    groups += [("output", i, f"output_blocks.{i}", b) for i, b in enumerate(getattr(dm, "output_blocks", []))]
    for block, block_id, name, module in groups:
        for j, layer in enumerate(module):
            if isinstance(layer, SpatialTransformer):
                for t, tb in enumerate(layer.transformer_blocks):
                    yield block, block_id, t, f"diffusion_model.{name}.{j}.transformer_blocks.{t}", tb


def model_sites(model_patcher: Any) -> list[Site]:
    """Every attn2 site of a UNet, in checkpoint order; [] for models without UNet blocks (DiTs)."""
    return checkpoint_order(Site(block, block_id, t, int(tb.attn2.to_k.weight.shape[0]))
                            for block, block_id, t, _, tb in transformer_blocks(model_patcher)
                            if getattr(tb, "attn2", None) is not None)


# Site.block -> the DiT's list of blocks: Flux's double / single blocks, SD3.5's MMDiT joint blocks
DIT_BLOCKS = {"double": "double_blocks", "single": "single_blocks", "joint": "joint_blocks"}


def dit_sites(model_patcher: Any, kinds: tuple[str, ...]) -> list[Site]:
    """The blocks of the given kinds ("double", "single": Flux; "joint": SD3's MMDiT) of a DiT as sites (block, index,
    0, hidden), kind by kind in the model's order; [] for models without them (UNets). hidden: the DiT's width
    (``hidden_size``: Flux's, or the MMDiT's 64 * depth, 2432 for SD3.5-Large)."""
    dm = model_patcher.get_model_object("diffusion_model")
    hidden = getattr(dm, "hidden_size", None)
    if hidden is None:
        return []
    return [Site(kind, i, 0, int(hidden)) for kind in kinds for i in range(len(getattr(dm, DIT_BLOCKS[kind], None) or ()))]


def family_sites(model_patcher: Any, family: Any) -> list[Site]:
    """The sites a family's adapters patch on this model: the UNet's attn2 sites for UNet families (no
    ``site_blocks``), else the DiT blocks of the family's kinds."""
    kinds = tuple(getattr(family, "site_blocks", ()) or ())
    return dit_sites(model_patcher, kinds) if kinds else model_sites(model_patcher)


def model_context_dim(model_patcher: Any) -> int | None:
    """Width of the text context the model reads (768 SD1.5, 2048 SDXL; a Flux DiT's text input, 4096), or None.
    An MMDiT (SD3): the width of the context stream its joint attention reads, after context_embedder: its hidden
    width (2432 for SD3.5-Large), which InstantX SD3.5's tokens have."""
    dm = model_patcher.get_model_object("diffusion_model")
    if getattr(dm, "joint_blocks", None) is not None and getattr(dm, "hidden_size", None) is not None:
        return int(dm.hidden_size)
    txt_in = getattr(dm, "txt_in", None)
    if isinstance(getattr(txt_in, "weight", None), torch.Tensor):
        return int(txt_in.weight.shape[1])
    for module in dm.modules():
        if isinstance(module, SpatialTransformer):
            for tb in module.transformer_blocks:
                if getattr(tb, "attn2", None) is not None:
                    return int(tb.attn2.to_k.weight.shape[1])
    return None


def percent_to_sigma(model_patcher: Any, percent: float) -> float:
    """ComfyUI's own conversion of a schedule fraction to a sigma (<= 0 -> very large, >= 1 -> 0)."""
    return float(model_patcher.get_model_object("model_sampling").percent_to_sigma(percent))


# ---------------------------------------------------------------------------------------------- CLIP vision

@dataclass(frozen=True)
class EncoderDims:
    hidden: int
    projection: int | None
    image_size: int


def clip_vision_dims(clip_vision: Any) -> EncoderDims:
    """Widths of a CLIP_VISION without running it."""
    model = clip_vision.model
    # no projection: a lambda (0.3.64) or torch.nn.Identity (0.33) for SigLIP, which has no weight
    weight = getattr(getattr(model, "visual_projection", None), "weight", None)
    emb = model.vision_model.embeddings.patch_embedding.weight
    projection = int(weight.shape[0]) if isinstance(weight, torch.Tensor) else None
    return EncoderDims(hidden=int(emb.shape[0]), projection=projection, image_size=int(clip_vision.image_size))


# SigLIP's pooling head (HF's pooler_output), which ComfyUI's loader drops: read once from the encoder's own file
_siglip_heads: "weakref.WeakKeyDictionary[Any, torch.nn.Module]" = weakref.WeakKeyDictionary()
_PATCH_KEY = "vision_model.embeddings.patch_embedding.weight"


def siglip_head(clip_vision: Any, *, where: str) -> torch.nn.Module:
    """The pooling head of a SigLIP CLIP_VISION (ip_adapter_core.siglip), from the clip_vision file it was loaded
    from: the file among ComfyUI's clip_vision files whose patch embedding equals the model's. Cached per encoder.
    InputError naming the file when it has no head (``vision_model.head.*``), or when no file matches."""
    hit = _siglip_heads.get(clip_vision)
    if hit is not None:
        return hit
    import folder_paths
    from safetensors import safe_open

    from ...ip_adapter_core.siglip import head_from_state_dict

    mine = clip_vision.model.vision_model.embeddings.patch_embedding.weight.detach().cpu()
    found = None
    for name in folder_paths.get_filename_list("clip_vision"):
        path = folder_paths.get_full_path("clip_vision", name)
        if not path or not path.endswith(".safetensors"):
            continue
        try:
            with safe_open(path, framework="pt") as f:
                if _PATCH_KEY not in f.keys() or tuple(f.get_slice(_PATCH_KEY).get_shape()) != tuple(mine.shape):
                    continue
                if not torch.equal(f.get_tensor(_PATCH_KEY).to(mine.dtype), mine):
                    continue
                found = name
                head_sd = {k: f.get_tensor(k) for k in f.keys() if k.startswith("vision_model.head.")}
        except Exception:  # an unreadable file is not this encoder's
            continue
        if head_sd:
            break
    if found is None:
        raise InputError(f"{where}, input 'clip_vision': this SigLIP encoder's file is not among the clip_vision files, "
                         f"so its pooling head (vision_model.head.*) cannot be read; load it with a CLIP Vision "
                         f"Loader from models/clip_vision.")
    layer = clip_vision.model.vision_model.encoder.layers[0].self_attn
    try:
        head = head_from_state_dict(head_sd, name=f"'{found}'", heads=int(layer.heads)).float()
    except Exception as e:
        raise InputError(f"{where}, input 'clip_vision': {e}") from None
    _siglip_heads[clip_vision] = head
    return head


def clip_vision_tokens(clip_vision: Any) -> int:
    """The number of tokens in a CLIP_VISION's hidden states (patches, plus the class token of CLIP; SigLIP 384: 729),
    from its position embedding, without running it."""
    return int(clip_vision.model.vision_model.embeddings.position_embedding.weight.shape[0])


def encode_images(clip_vision: Any, images: torch.Tensor, output: str, *, crop: bool = True) -> torch.Tensor:
    """images: IMAGE (B, H, W, 3) -> image_embeds (B, E) or penultimate (B, N, E), float32 on the intermediate device,
    each image centre-cropped to a square (``crop``, ComfyUI's default) or squashed to it (SigLIP's processor);
    "pooled": SigLIP's pooled output (B, E): its post-LayerNorm tokens (ComfyUI's image_embeds for SigLIP), squashed to
    the encoder's size without a crop as SigLIP's processor does, through the pooling head (see :func:`siglip_head`,
    which the encoder stage's check has loaded)."""
    if output == "pooled":
        states = clip_vision.encode_image(images, crop=False)["image_embeds"]
        if states.dim() != 3:
            raise InputError(f"this CLIP vision encoder gives one embedding per image {tuple(states.shape)}, not "
                             f"SigLIP's token sequence; load google/siglip-so400m-patch14-384.")
        head = _siglip_heads[clip_vision]
        with torch.no_grad():
            return head.to(states.device)(states.float())
    out = clip_vision.encode_image(images, crop=crop)
    key = "image_embeds" if output == "image_embeds" else "penultimate_hidden_states"
    return out[key].float()


def encode_zero_pixels(clip_vision: Any) -> torch.Tensor:
    """Penultimate states of an all-zero *normalised* image (the reference's uncond for plus / full face): (1, N, E)."""
    mm.load_model_gpu(clip_vision.patcher)
    size = int(clip_vision.image_size)
    pixels = torch.zeros(1, 3, size, size, device=clip_vision.load_device)
    out = clip_vision.model(pixel_values=pixels, intermediate_output=-2)
    return out[1].to(mm.intermediate_device()).float()


_clip_cache: "weakref.WeakValueDictionary[tuple, Any]" = weakref.WeakValueDictionary()


def load_clip_vision(path: str) -> Any:
    """A CLIP_VISION from a file (or the one already loaded); cached by real path, size and modification time.

    ComfyUI's own loader (``comfy.clip_vision.load``) first; it recognises the published encoders by their layer
    count. A file it does not recognise loads from the ``<name>.json`` config next to it (ClipVisionModel's own
    config format), when there is one; every weight must then fit that config.
    """
    key = file_key(path)
    name = os.path.basename(path)
    with _cache_lock:
        hit = _clip_cache.get(key)
        if hit is not None:
            return hit
        try:
            model = comfy.clip_vision.load(path)
        except Exception as e:  # a recognised layer count with other widths: fall back to a config next to it
            model, failure = None, f"{type(e).__name__}: {str(e)[:200]}"
        else:
            failure = "it is not one of the encoders ComfyUI recognises"
        config = os.path.splitext(path)[0] + ".json"
        if model is None and os.path.isfile(config):
            model = comfy.clip_vision.ClipVisionModel(config)
            sd = comfy.utils.load_torch_file(path, safe_load=True)
            if "visual.transformer.resblocks.0.attn.in_proj_weight" in sd:
                sd = comfy.clip_vision.convert_to_transformers(sd, "visual.")
            missing, unexpected = model.load_sd(sd)
            if missing or unexpected:
                raise InputError(f"'{name}' does not fit its config {os.path.basename(config)}: missing "
                                 f"{list(missing)[:3]}, unexpected {list(unexpected)[:3]}.")
        if model is None:
            raise InputError(f"ComfyUI cannot load '{name}' as a CLIP vision model ({failure}); use a published "
                             f"encoder, or put its config as '{os.path.basename(config)}' next to it.")
        _clip_cache[key] = model
        return model
