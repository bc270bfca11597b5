"""One class per served ComfyUI_IPAdapter_plus node ID: the old inputs (schema.py) read and handed to this pack's
nodes and host functions (IPA Load Adapter, IPA Unified Loader, IPA Load Face Models, plan_for + encode + install).

Sockets: IPADAPTER carries an :class:`OldAdapter` (this pack's LoadedAdapter, plus the CLIP vision and face models
where a unified loader found them), EMBEDS carries this pack's ImageTokens (the uncond inside), INSIGHTFACE this
pack's FaceModels. Results default to the old pack's (compatibility "ComfyUI_IPAdapter_plus": no middle-block term,
black-image uncond, RGB face crop for FaceID Plus); ``IPA_OLD_API=reference`` (read once, at import) gives this
pack's reference behaviour instead.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import folder_paths
import torch

from ...ip_adapter_core.combine import combine_tokens
from ...ip_adapter_core.compat import prepare_images
from ...ip_adapter_core.embeds import ImageTokens
from ...ip_adapter_core.errors import InputError
from ...ip_adapter_core.plan import OLD_PACK
from ...migration.schemas import INTERPOLATIONS, SIMPLE_WEIGHT_TYPES, UNIFIED_PRESETS
from ..common import reports
from ..face import IPAFaceModelLoader
from ..folders import FOLDER, face_model_names
from ..loader import IPAModelLoader
from ..patch import encoder
from ..patch.face import CLIP_CROP_COLORS, DET_SIZES, FaceEncoder, encode_faces
from ..patch.host import LoadedAdapter, projection_device
from ..patch.install import install, plan_for
from ..noise import IPANoiseImage
from ..prep import IPAPrepImage
from ..unified_loader import IPAUnifiedLoader
from . import schema

_log = logging.getLogger("comfyui-ipa")
SWITCH = "IPA_OLD_API"
REFERENCE = "reference"


def _mode(value: str) -> str:
    value = value.strip()
    if value in ("", OLD_PACK, "old"):
        return OLD_PACK
    if value != REFERENCE:
        _log.warning("IPA: %s=%r is not 'reference' or '%s'; using '%s'.", SWITCH, value, OLD_PACK, OLD_PACK)
        return OLD_PACK
    return REFERENCE


MODE = _mode(os.environ.get(SWITCH, ""))
COMPATIBILITY = OLD_PACK if MODE == OLD_PACK else "this pack"
UNCOND = "black image" if MODE == OLD_PACK else "reference"
FACE_CROP = CLIP_CROP_COLORS[1] if MODE == OLD_PACK else CLIP_CROP_COLORS[0]


@dataclasses.dataclass(eq=False)
class OldAdapter:
    """What an old IPADAPTER socket carries here."""
    adapter: LoadedAdapter
    clip_vision: Any = None
    face_models: Any = None


def _resolve() -> dict:
    return {schema.IPADAPTER_FILES: lambda: folder_paths.get_filename_list(FOLDER),
            schema.FACE_MODEL_NAMES: face_model_names}


def _node(node_id: str):
    """Class decorator: the old node's INPUT_TYPES, outputs, category, function and display name from schema.py."""
    old = schema.OLD_NODES[node_id]

    def make(cls):
        cls.INPUT_TYPES = classmethod(lambda c: schema.input_types(node_id, _resolve()))
        cls.RETURN_TYPES, cls.CATEGORY, cls.FUNCTION = old.return_types, old.category, old.function
        if old.return_names is not None:
            cls.RETURN_NAMES = old.return_names
        cls.DISPLAY_NAME = old.display
        cls.NODE_ID = node_id
        cls.DESCRIPTION = (f"{old.display} of ComfyUI_IPAdapter_plus (node ID {node_id}), served by this pack for "
                           f"clients and saved graphs built for it; see the help page 'old_api'.")
        setattr(cls, old.function, reports(old.display)(cls.run))
        return cls

    return make


def _combined(tokens: ImageTokens, method: str, where: str) -> ImageTokens:
    """The old combine_embeds on the tokens (the old pack combined the CLIP embeddings: close, not equal)."""
    if method == "concat":
        return tokens
    return dataclasses.replace(tokens, cond=combine_tokens(tokens.cond, method, None, where=where))


def _clip(ipadapter: OldAdapter, clip_vision: Any, where: str) -> Any:
    clip = clip_vision if clip_vision is not None else ipadapter.clip_vision
    if clip is None:
        raise InputError(f"{where}: missing CLIP vision: connect 'clip_vision' (or load the adapter with "
                         "'IPAdapter Unified Loader').")
    return clip


def _apply(model, ipadapter: OldAdapter, tokens, plan, where: str):
    return (install(model, ipadapter.adapter, tokens, plan, where=where),)


@_node("IPAdapterModelLoader")
class OldModelLoader:
    def run(self, ipadapter_file: str):
        out = IPAModelLoader().load(ipadapter_file)
        return {"ui": out["ui"], "result": (OldAdapter(out["result"][0]),)}


@_node("IPAdapterInsightFaceLoader")
class OldInsightFaceLoader:
    def run(self, provider: str, model_name: str):
        return IPAFaceModelLoader().load(model_name, provider)


@_node("IPAdapterUnifiedLoader")
class OldUnifiedLoader:
    @classmethod
    def IS_CHANGED(cls, **inputs):
        return IPAUnifiedLoader.IS_CHANGED(**inputs)

    def run(self, model, preset: str, ipadapter: OldAdapter | None = None):
        if preset not in UNIFIED_PRESETS:
            raise InputError(f"input 'preset': '{preset}' is not one of {list(UNIFIED_PRESETS)}.")
        out = IPAUnifiedLoader().load(model, UNIFIED_PRESETS[preset])
        model, adapter, clip_vision = out["result"]
        faces = ipadapter.face_models if ipadapter is not None else None
        return {"ui": out["ui"], "result": (model, OldAdapter(adapter, clip_vision, faces))}


@_node("IPAdapter")
class OldIPAdapter:
    def run(self, model, ipadapter: OldAdapter, image: torch.Tensor, weight: float, start_at: float, end_at: float,
            weight_type: str, attn_mask: torch.Tensor | None = None):
        where = self.DISPLAY_NAME
        wt = "style transfer" if weight_type.startswith("style") else SIMPLE_WEIGHT_TYPES.get(weight_type, "linear")
        plan = plan_for(model, ipadapter.adapter, where=where, weight=weight, weight_type=wt, start_at=start_at,
                        end_at=end_at, attn_mask=attn_mask, compatibility=COMPATIBILITY)
        tokens = encoder.encode(ipadapter.adapter, _clip(ipadapter, None, where), image, where=where,
                                uncond=plan.encode_uncond)
        return _apply(model, ipadapter, tokens, plan, where)


@_node("IPAdapterAdvanced")
class OldAdvanced:
    def run(self, model, ipadapter: OldAdapter, image: torch.Tensor, weight: float, weight_type: str,
            combine_embeds: str, start_at: float, end_at: float, embeds_scaling: str,
            image_negative: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
            clip_vision: Any = None):
        return _advanced(self.DISPLAY_NAME, model, ipadapter, image, weight, weight_type, combine_embeds, start_at,
                         end_at, embeds_scaling, image_negative, attn_mask, clip_vision)


def _advanced(where, model, ipadapter, image, weight, weight_type, combine_embeds, start_at, end_at, embeds_scaling,
              image_negative, attn_mask, clip_vision, unfold=False, batch_size=0):
    plan = plan_for(model, ipadapter.adapter, where=where, weight=weight, weight_type=weight_type,
                    start_at=start_at, end_at=end_at, embeds_scaling=embeds_scaling, attn_mask=attn_mask,
                    compatibility=COMPATIBILITY, unfold_batch=unfold)
    tokens = encoder.encode(ipadapter.adapter, _clip(ipadapter, clip_vision, where), image, where=where,
                            uncond=plan.encode_uncond, negative_image=image_negative, batch_size=batch_size)
    return _apply(model, ipadapter, _combined(tokens, combine_embeds, where), plan, where)


@_node("IPAdapterBatch")
class OldBatch:
    def run(self, model, ipadapter: OldAdapter, image: torch.Tensor, weight: float, weight_type: str,
            start_at: float, end_at: float, embeds_scaling: str, encode_batch_size: int,
            image_negative: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
            clip_vision: Any = None):  # image i -> latent i (unfold_batch), as the old pack
        return _advanced(self.DISPLAY_NAME, model, ipadapter, image, weight, weight_type, "concat", start_at, end_at,
                         embeds_scaling, image_negative, attn_mask, clip_vision, unfold=True,
                         batch_size=encode_batch_size)


@_node("IPAdapterEmbeds")
class OldEmbeds:
    UNFOLD = False

    def run(self, model, ipadapter: OldAdapter, pos_embed: ImageTokens, weight: float, weight_type: str,
            start_at: float, end_at: float, embeds_scaling: str, neg_embed: ImageTokens | None = None,
            attn_mask: torch.Tensor | None = None, clip_vision: Any = None):
        where = self.DISPLAY_NAME
        plan = plan_for(model, ipadapter.adapter, where=where, weight=weight, weight_type=weight_type,
                        start_at=start_at, end_at=end_at, embeds_scaling=embeds_scaling, attn_mask=attn_mask,
                        compatibility=COMPATIBILITY, unfold_batch=self.UNFOLD)
        tokens = pos_embed
        if neg_embed is not None and neg_embed is not pos_embed:  # the uncond of another encode
            a = ipadapter.adapter
            neg_embed.check_fits(a.spec, a.adapter_id, a.name, where=f"{where}, input 'neg_embed'")
            tokens = dataclasses.replace(pos_embed, uncond=neg_embed.uncond)
        return _apply(model, ipadapter, tokens, plan, where)


@_node("IPAdapterEmbedsBatch")
class OldEmbedsBatch(OldEmbeds):
    UNFOLD = True  # embedding i -> latent i, as the old pack


class _ScaledStage:
    """The encoder stage with its features times ``weight``: the old encoder's weight (on the CLIP embedding)."""

    def __init__(self, stage: Any, weight: float):
        self.stage, self.weight = stage, float(weight)

    def features(self, adapter, clip, images):
        return self.stage.features(adapter, clip, images) * self.weight


@_node("IPAdapterEncoder")
class OldEncoder:
    def run(self, ipadapter: OldAdapter, image: torch.Tensor, weight: float, mask: torch.Tensor | None = None,
            clip_vision: Any = None):
        where = self.DISPLAY_NAME
        adapter, clip = ipadapter.adapter, _clip(ipadapter, clip_vision, where)
        text = []
        if mask is not None:
            text.append("'mask' is not used: this pack encodes the whole image (use attn_mask on the apply node).")
        if weight == 1:
            tokens = encoder.encode(adapter, clip, image, where=where, uncond=UNCOND)
        else:  # the uncond from one image; the cond from every image's embedding times weight, as the old pack
            tokens = encoder.encode(adapter, clip, image[:1], where=where, uncond=UNCOND)
            stage = _ScaledStage(encoder.check(adapter, clip, where=where), weight)
            images = prepare_images(image, where=f"{where}, input 'image'")
            cond = encoder.project_images(stage, adapter, clip, images, 0, projection_device(adapter))
            tokens = dataclasses.replace(tokens, cond=cond)
        return {"ui": {"text": text}, "result": (tokens, tokens)}


@_node("IPAdapterCombineEmbeds")
class OldCombineEmbeds:
    def run(self, embed1: ImageTokens, method: str, embed2: ImageTokens | None = None,
            embed3: ImageTokens | None = None, embed4: ImageTokens | None = None, embed5: ImageTokens | None = None):
        where = self.DISPLAY_NAME
        others = [e for e in (embed2, embed3, embed4, embed5) if e is not None]
        for i, e in enumerate(others):
            e.check_fits(embed1.spec, embed1.adapter_id, embed1.adapter_name, where=f"{where}, embed{i + 2}")
        if method == "concat" and not others:
            return (embed1,)
        cond = torch.cat([embed1.cond] + [e.cond for e in others])
        return (_combined(dataclasses.replace(embed1, cond=cond), method, where),)


@_node("IPAdapterFaceID")
class OldFaceID:
    def run(self, model, ipadapter: OldAdapter, image: torch.Tensor, weight: float, weight_faceidv2: float,
            weight_type: str, combine_embeds: str, start_at: float, end_at: float, embeds_scaling: str,
            image_negative: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
            clip_vision: Any = None, insightface: Any = None):
        where = self.DISPLAY_NAME
        faces = insightface if insightface is not None else ipadapter.face_models
        if faces is None:
            raise InputError(f"{where}: connect 'insightface' (IPAdapter InsightFace Loader).")
        # the old node applies no LoRA: clients load the FaceID LoRA themselves
        plan = plan_for(model, ipadapter.adapter, where=where, weight=weight, weight_type=weight_type,
                        start_at=start_at, end_at=end_at, embeds_scaling=embeds_scaling, attn_mask=attn_mask,
                        compatibility=COMPATIBILITY, lora_strength=0.0)
        clip = clip_vision if clip_vision is not None else ipadapter.clip_vision
        face_encoder = FaceEncoder(faces=faces, clip_vision=clip, det_sizes=DET_SIZES,
                                   v2_scale=float(weight_faceidv2), crop_colors=FACE_CROP)
        tokens, crops, notes = encode_faces(ipadapter.adapter, face_encoder, image, where=where)
        if image_negative is not None:
            notes.append("'image_negative' is not used (the uncond is the zero face embedding).")
        patched = install(model, ipadapter.adapter, _combined(tokens, combine_embeds, where), plan, where=where,
                          notes=notes)
        return {"ui": {"text": [ipadapter.adapter.spec.describe()] + notes}, "result": (patched, crops)}


@_node("PrepImageForClipVision")
class OldPrepImage:
    def run(self, image: torch.Tensor, interpolation: str = "LANCZOS", crop_position: str = "center",
            sharpening: float = 0.0):
        if interpolation not in INTERPOLATIONS:
            raise InputError(f"input 'interpolation': '{interpolation}' is not one of {list(INTERPOLATIONS)}.")
        # the old node's fixed 224 x 224; this pack's resize filters (HAMMING -> bilinear, BOX -> area)
        return IPAPrepImage().run(image, crop_position, INTERPOLATIONS[interpolation], sharpening, size=224)


@_node("IPAdapterNoise")
class OldNoise:
    def run(self, type: str, strength: float, blur: int, image_optional: torch.Tensor | None = None):
        # the old node's 224 x 224 (black, or the image centre-cropped, bicubic); seed 0 (the old one had none)
        image = None if image_optional is None else IPAPrepImage().run(image_optional, "center", "bicubic", 0.0)[0]
        noise = IPANoiseImage().run(224, 224, 1, 0, type, strength, image=image)[0]
        if blur > 0:  # the old node's Gaussian blur (odd kernel); this pack's noise node has none
            from torchvision.transforms.functional import gaussian_blur

            k = int(blur) + (1 - int(blur) % 2)
            noise = gaussian_blur(noise.permute(0, 3, 1, 2), [k, k]).permute(0, 2, 3, 1)
        return (noise,)


WRAPPERS = {cls.NODE_ID: cls for cls in (OldModelLoader, OldInsightFaceLoader, OldUnifiedLoader, OldIPAdapter,
                                         OldAdvanced, OldBatch, OldEmbeds, OldEmbedsBatch, OldEncoder, OldCombineEmbeds, OldFaceID,
                                         OldNoise, OldPrepImage)}
