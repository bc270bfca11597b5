"""The first served ComfyUI_IPAdapter_plus node IDs: loaders, the apply nodes Krita AI Diffusion and the old pack's
simplest graphs use (IPAdapter, Advanced, Batch, Embeds, Embeds Batch, FaceID), Encoder, Combine Embeds, Noise and
Prep Image; each reads the old inputs (schema.py) and hands them to this pack's nodes and host functions (IPA Load
Adapter, IPA Unified Loader, IPA Load Face Models, plan_for + encode + install). base.py has what they share.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ...ip_adapter_core.compat import prepare_images
from ...ip_adapter_core.embeds import ImageTokens, check_combinable
from ...ip_adapter_core.errors import InputError
from ...migration.schemas import INTERPOLATIONS, SIMPLE_WEIGHT_TYPES, UNIFIED_PRESETS
from ..face import IPAFaceModelLoader
from ..loader import IPAModelLoader
from ..patch import encoder
from ..patch.face import DET_SIZES, FaceEncoder, encode_faces
from ..patch.host import projection_device
from ..patch.install import install, plan_for
from ..noise import IPANoiseImage
from ..prep import IPAPrepImage
from ..unified_loader import IPAUnifiedLoader
from .base import FACE_CROP, UNCOND, COMPATIBILITY, OldAdapter, apply_tokens, clip_of, combined, old_node, weight_controls


@old_node("IPAdapterModelLoader")
class OldModelLoader:
    def run(self, ipadapter_file: str):
        out = IPAModelLoader().load(ipadapter_file)
        return {"ui": out["ui"], "result": (OldAdapter(out["result"][0]),)}


@old_node("IPAdapterInsightFaceLoader")
class OldInsightFaceLoader:
    def run(self, provider: str, model_name: str):
        return IPAFaceModelLoader().load(model_name, provider)


@old_node("IPAdapterUnifiedLoader")
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


@old_node("IPAdapter")
class OldIPAdapter:
    def run(self, model, ipadapter: OldAdapter, image: torch.Tensor, weight: float, start_at: float, end_at: float,
            weight_type: str, attn_mask: torch.Tensor | None = None):
        where = self.DISPLAY_NAME
        wt = "style transfer" if weight_type.startswith("style") else SIMPLE_WEIGHT_TYPES.get(weight_type, "linear")
        plan = plan_for(model, ipadapter.adapter, where=where, **weight_controls(weight, False, where),
                        weight_type=wt, start_at=start_at, end_at=end_at, attn_mask=attn_mask, compatibility=COMPATIBILITY)
        tokens = encoder.encode(ipadapter.adapter, clip_of(ipadapter, None, where), image, where=where,
                                uncond=plan.encode_uncond)
        return apply_tokens(model, ipadapter, tokens, plan, where)


@old_node("IPAdapterAdvanced")
class OldAdvanced:
    def run(self, model, ipadapter: OldAdapter, image: torch.Tensor, weight: float, weight_type: str,
            combine_embeds: str, start_at: float, end_at: float, embeds_scaling: str,
            image_negative: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
            clip_vision: Any = None):
        return _advanced(self.DISPLAY_NAME, model, ipadapter, image, weight, weight_type, combine_embeds, start_at,
                         end_at, embeds_scaling, image_negative, attn_mask, clip_vision)


def _advanced(where, model, ipadapter, image, weight, weight_type, combine_embeds, start_at, end_at, embeds_scaling,
              image_negative, attn_mask, clip_vision, unfold=False, batch_size=0, enhance=None, **controls):
    """IPAdapter Advanced's apply (and every old apply built on it); ``enhance``: (tiles, ratio) of the ClipVision
    Enhancer (encoder.encode); ``controls``: more plan controls (layer_weights, boost_weight, ...)."""
    plan = plan_for(model, ipadapter.adapter, where=where, **weight_controls(weight, unfold, where),
                    weight_type=weight_type, start_at=start_at, end_at=end_at, embeds_scaling=embeds_scaling,
                    attn_mask=attn_mask, compatibility=COMPATIBILITY, unfold_batch=unfold, **controls)
    tokens = encoder.encode(ipadapter.adapter, clip_of(ipadapter, clip_vision, where), image, where=where,
                            uncond=plan.encode_uncond, negative_image=image_negative, batch_size=batch_size,
                            enhance=enhance)
    return apply_tokens(model, ipadapter, combined(tokens, combine_embeds, where), plan, where)


@old_node("IPAdapterBatch")
class OldBatch:
    def run(self, model, ipadapter: OldAdapter, image: torch.Tensor, weight: float, weight_type: str,
            start_at: float, end_at: float, embeds_scaling: str, encode_batch_size: int,
            image_negative: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
            clip_vision: Any = None):  # image i -> latent i (unfold_batch), as the old pack
        return _advanced(self.DISPLAY_NAME, model, ipadapter, image, weight, weight_type, "concat", start_at, end_at,
                         embeds_scaling, image_negative, attn_mask, clip_vision, unfold=True,
                         batch_size=encode_batch_size)


@old_node("IPAdapterEmbeds")
class OldEmbeds:
    UNFOLD = False

    def run(self, model, ipadapter: OldAdapter, pos_embed: ImageTokens, weight: float, weight_type: str,
            start_at: float, end_at: float, embeds_scaling: str, neg_embed: ImageTokens | None = None,
            attn_mask: torch.Tensor | None = None, clip_vision: Any = None):
        where = self.DISPLAY_NAME
        plan = plan_for(model, ipadapter.adapter, where=where, **weight_controls(weight, self.UNFOLD, where),
                        weight_type=weight_type, start_at=start_at, end_at=end_at, embeds_scaling=embeds_scaling,
                        attn_mask=attn_mask, compatibility=COMPATIBILITY, unfold_batch=self.UNFOLD)
        tokens = pos_embed
        if neg_embed is not None and neg_embed is not pos_embed:  # the uncond of another encode
            a = ipadapter.adapter
            neg_embed.check_fits(a.spec, a.adapter_id, a.name, where=f"{where}, input 'neg_embed'")
            tokens = dataclasses.replace(pos_embed, uncond=neg_embed.uncond)
        return apply_tokens(model, ipadapter, tokens, plan, where)


@old_node("IPAdapterEmbedsBatch")
class OldEmbedsBatch(OldEmbeds):
    UNFOLD = True  # embedding i -> latent i, as the old pack


class _ScaledStage:
    """The encoder stage with its features times ``weight``: the old encoder's weight (on the CLIP embedding)."""

    def __init__(self, stage: Any, weight: float):
        self.stage, self.weight = stage, float(weight)

    def features(self, adapter, clip, images):
        return self.stage.features(adapter, clip, images) * self.weight


@old_node("IPAdapterEncoder")
class OldEncoder:
    def run(self, ipadapter: OldAdapter, image: torch.Tensor, weight: float, mask: torch.Tensor | None = None,
            clip_vision: Any = None):
        where = self.DISPLAY_NAME
        adapter, clip = ipadapter.adapter, clip_of(ipadapter, clip_vision, where)
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


@old_node("IPAdapterCombineEmbeds")
class OldCombineEmbeds:
    def run(self, embed1: ImageTokens, method: str, embed2: ImageTokens | None = None,
            embed3: ImageTokens | None = None, embed4: ImageTokens | None = None, embed5: ImageTokens | None = None):
        where = self.DISPLAY_NAME
        check_combinable(embed1, where=where)  # InstantX SD3.5 embeds hold features, not tokens
        others = [e for e in (embed2, embed3, embed4, embed5) if e is not None]
        for i, e in enumerate(others):
            e.check_fits(embed1.spec, embed1.adapter_id, embed1.adapter_name, where=f"{where}, embed{i + 2}")
        if method == "concat" and not others:
            return (embed1,)
        cond = torch.cat([embed1.cond] + [e.cond for e in others])
        return (combined(dataclasses.replace(embed1, cond=cond), method, where),)


@old_node("IPAdapterFaceID")
class OldFaceID:
    UNFOLD = False

    def run(self, model, ipadapter: OldAdapter, image: torch.Tensor, weight: float, weight_faceidv2: float,
            weight_type: str, combine_embeds: str, start_at: float, end_at: float, embeds_scaling: str,
            image_negative: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
            clip_vision: Any = None, insightface: Any = None):
        return _faceid(self.DISPLAY_NAME, model, ipadapter, image, weight, weight_faceidv2, weight_type,
                       combine_embeds, start_at, end_at, embeds_scaling, image_negative, attn_mask, clip_vision,
                       insightface, unfold=self.UNFOLD)


def _faceid(where, model, ipadapter, image, weight, weight_faceidv2, weight_type, combine_embeds, start_at, end_at,
            embeds_scaling, image_negative, attn_mask, clip_vision, insightface, unfold=False, **controls):
    """IPAdapter FaceID's apply (and the Mad Scientist's with a FaceID adapter): {"ui", "result": (model, crops)}."""
    faces = insightface if insightface is not None else ipadapter.face_models
    if faces is None:
        raise InputError(f"{where}: connect 'insightface' (IPAdapter InsightFace Loader).")
    # the old node applies no LoRA: clients load the FaceID LoRA themselves
    plan = plan_for(model, ipadapter.adapter, where=where, **weight_controls(weight, unfold, where),
                    weight_type=weight_type, start_at=start_at, end_at=end_at, embeds_scaling=embeds_scaling,
                    attn_mask=attn_mask, compatibility=COMPATIBILITY, lora_strength=0.0, unfold_batch=unfold,
                    **controls)
    clip = clip_vision if clip_vision is not None else ipadapter.clip_vision
    face_encoder = FaceEncoder(faces=faces, clip_vision=clip, det_sizes=DET_SIZES,
                               v2_scale=float(weight_faceidv2), crop_colors=FACE_CROP)
    tokens, crops, notes = encode_faces(ipadapter.adapter, face_encoder, image, where=where)
    if image_negative is not None:
        notes.append("'image_negative' is not used (the uncond is the zero face embedding).")
    patched = install(model, ipadapter.adapter, combined(tokens, combine_embeds, where), plan, where=where,
                      notes=notes)
    return {"ui": {"text": [ipadapter.adapter.spec.describe()] + notes}, "result": (patched, crops)}


@old_node("IPAAdapterFaceIDBatch")
class OldFaceIDBatch(OldFaceID):
    UNFOLD = True  # face i -> latent i, as the old pack


@old_node("PrepImageForClipVision")
class OldPrepImage:
    def run(self, image: torch.Tensor, interpolation: str = "LANCZOS", crop_position: str = "center",
            sharpening: float = 0.0):
        if interpolation not in INTERPOLATIONS:
            raise InputError(f"input 'interpolation': '{interpolation}' is not one of {list(INTERPOLATIONS)}.")
        # the old node's fixed 224 x 224; this pack's resize filters (HAMMING -> bilinear, BOX -> area)
        return IPAPrepImage().run(image, crop_position, INTERPOLATIONS[interpolation], sharpening, size=224)


@old_node("IPAdapterNoise")
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
