"""Served ComfyUI_IPAdapter_plus node IDs: the other apply nodes. Tiled (+ Batch), Style & Composition (+ Batch),
Mad Scientist, ClipVision Enhancer (+ Batch), Precise Style Transfer / Composition (+ Batch). Each reads the old inputs (its definition in
schema_apply.py) and applies as IPAdapter Advanced does (wrappers._advanced: plan_for + encode + install), with:

- Precise: weight type "style transfer precise" / "composition precise" and the boost as the boosted layers'
  weight itself (the old absolute style_boost / composition_boost, which acts also at weight 0);
- Mad Scientist: layer_weights (the old "index:value" list, SpatialTransformer indices; this pack's syntax also
  takes its other targets); a FaceID adapter goes through IPAdapter FaceID's apply, with weight_faceidv2;
- ClipVision Enhancer: the reference encoded whole and as enhance_tiles x enhance_tiles tiles, pooled back and mixed
  by enhance_ratio (ip_adapter_core.enhance);
- Style & Composition: the style image with "style transfer" ("strong style transfer" with expand_style) and the
  composition image with "composition", each its own term (the layers do not overlap: the old pack's one patch with
  two token sets computes the same);
- Tiled: the old pack's tiles (ip_adapter_core.tiles.old_pack_tiling: a centre square for near-square references,
  a resize with PIL's Lanczos on 8-bit pixels, 256 px tiles, at most 4 per side) and its contrast-adaptive
  sharpening, one apply per tile limited to the tile's region of the mask; the tiles and masks are returned.
"""
from __future__ import annotations

from typing import Any

import torch
import torchvision.transforms.functional as TF
from PIL import Image

from ...ip_adapter_core.enhance import check_enhance
from ...ip_adapter_core.families import faceid
from ...ip_adapter_core.masks import mask_batch
from ...ip_adapter_core.prep import cas_sharpen
from ...ip_adapter_core.regions import style_composition_types
from ...ip_adapter_core.tiles import old_pack_tiling
from ..patch import encoder
from ..patch.install import install, plan_for
from .base import COMPATIBILITY, OldAdapter, clip_of, combined, old_node, weight_controls
from .wrappers import _advanced, _faceid

BICUBIC = TF.InterpolationMode.BICUBIC


# ---------------------------------------------------------------------------------------------- precise, MS

@old_node("IPAdapterPreciseStyleTransfer")
class OldPreciseStyleTransfer:
    UNFOLD = False
    WEIGHT_TYPE = "style transfer precise"

    def run(self, model, ipadapter: OldAdapter, image: torch.Tensor, weight: float, combine_embeds: str,
            start_at: float, end_at: float, embeds_scaling: str, image_negative: torch.Tensor | None = None,
            attn_mask: torch.Tensor | None = None, clip_vision: Any = None, style_boost: float | None = None,
            composition_boost: float | None = None):
        boost = style_boost if self.WEIGHT_TYPE == "style transfer precise" else composition_boost
        return _advanced(self.DISPLAY_NAME, model, ipadapter, image, weight, self.WEIGHT_TYPE, combine_embeds,
                         start_at, end_at, embeds_scaling, image_negative, attn_mask, clip_vision, unfold=self.UNFOLD,
                         boost_weight=float(boost))


@old_node("IPAdapterPreciseStyleTransferBatch")
class OldPreciseStyleTransferBatch(OldPreciseStyleTransfer):
    UNFOLD = True  # image i -> latent i, as the old pack


@old_node("IPAdapterPreciseComposition")
class OldPreciseComposition(OldPreciseStyleTransfer):
    WEIGHT_TYPE = "composition precise"


@old_node("IPAdapterPreciseCompositionBatch")
class OldPreciseCompositionBatch(OldPreciseComposition):
    UNFOLD = True


@old_node("IPAdapterMS")
class OldMadScientist:
    def run(self, model, ipadapter: OldAdapter, image: torch.Tensor, weight: float, weight_faceidv2: float,
            weight_type: str, combine_embeds: str, start_at: float, end_at: float, embeds_scaling: str,
            layer_weights: str, image_negative: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
            clip_vision: Any = None, insightface: Any = None):
        where = self.DISPLAY_NAME
        args = (model, ipadapter, image, weight)
        tail = (weight_type, combine_embeds, start_at, end_at, embeds_scaling, image_negative, attn_mask, clip_vision)
        if ipadapter.adapter.spec.adapter_family == faceid.NAME:
            return _faceid(where, *args, weight_faceidv2, *tail, insightface, layer_weights=layer_weights)
        return _advanced(where, *args, *tail, layer_weights=layer_weights)


@old_node("IPAdapterClipVisionEnhancer")
class OldClipVisionEnhancer:
    UNFOLD = False

    def run(self, model, ipadapter: OldAdapter, image: torch.Tensor, weight: float, weight_type: str, start_at: float,
            end_at: float, embeds_scaling: str, enhance_tiles: int, enhance_ratio: float, combine_embeds: str = "concat",
            image_negative: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
            clip_vision: Any = None, encode_batch_size: int = 0):
        check_enhance(enhance_tiles, enhance_ratio, where=self.DISPLAY_NAME)
        return _advanced(self.DISPLAY_NAME, model, ipadapter, image, weight, weight_type, combine_embeds, start_at,
                         end_at, embeds_scaling, image_negative, attn_mask, clip_vision, unfold=self.UNFOLD,
                         batch_size=encode_batch_size, enhance=(enhance_tiles, enhance_ratio))


@old_node("IPAdapterClipVisionEnhancerBatch")
class OldClipVisionEnhancerBatch(OldClipVisionEnhancer):
    UNFOLD = True  # image i -> latent i, as the old pack


# ---------------------------------------------------------------------------------------------- style & composition

@old_node("IPAdapterStyleComposition")
class OldStyleComposition:
    UNFOLD = False

    def run(self, model, ipadapter: OldAdapter, image_style: torch.Tensor, image_composition: torch.Tensor,
            weight_style: float, weight_composition: float, expand_style: bool, start_at: float, end_at: float,
            embeds_scaling: str, combine_embeds: str = "concat", image_negative: torch.Tensor | None = None,
            attn_mask: torch.Tensor | None = None, clip_vision: Any = None):
        where = self.DISPLAY_NAME
        adapter, clip = ipadapter.adapter, clip_of(ipadapter, clip_vision, where)
        style_type, composition_type = style_composition_types(expand_style)
        terms = ((image_style, "image_style", weight_style, style_type),
                 (image_composition, "image_composition", weight_composition, composition_type))
        plans = [plan_for(model, adapter, where=f"{where} ({name})", **weight_controls(weight, self.UNFOLD, where),
                          weight_type=weight_type, start_at=start_at, end_at=end_at, embeds_scaling=embeds_scaling,
                          attn_mask=attn_mask, compatibility=COMPATIBILITY, unfold_batch=self.UNFOLD)
                 for _, name, weight, weight_type in terms]  # bad inputs fail before any image is encoded
        for plan, (image, name, _, _) in zip(plans, terms):
            tokens = encoder.encode(adapter, clip, image, where=f"{where} ({name})", uncond=plan.encode_uncond,
                                    negative_image=image_negative)
            model = install(model, adapter, combined(tokens, combine_embeds, where), plan, where=f"{where} ({name})")
        return (model,)


@old_node("IPAdapterStyleCompositionBatch")
class OldStyleCompositionBatch(OldStyleComposition):
    UNFOLD = True  # style image i and composition image i -> latent i, as the old pack


# ---------------------------------------------------------------------------------------------- tiled

def old_tiles(image: torch.Tensor, attn_mask: torch.Tensor | None, sharpening: float, *, where: str):
    """(tiles, masks): the old pack's tiles of every reference, (N, B, 256, 256, C) tile-major, and each tile's mask
    (N, M, h, w) on the resized reference's canvas (the attention mask, else ones, inside the tile, 0 outside)."""
    b, oh, ow, _ = image.shape
    layout = old_pack_tiling(oh, ow, where=where)
    mask = torch.ones(1, oh, ow) if attn_mask is None else mask_batch(attn_mask, where="input 'attn_mask'")
    mask = TF.resize(mask.float().cpu().unsqueeze(1), [oh, ow], interpolation=BICUBIC, antialias=True)
    x = image.movedim(-1, 1).float().cpu()
    if layout.square is not None:
        x, mask = TF.center_crop(x, [layout.square]), TF.center_crop(mask, [layout.square])
    h, w = layout.resize  # PIL's Lanczos on 8-bit pixels, as the old pack
    x = torch.stack([TF.to_tensor(TF.to_pil_image(img).resize((w, h), resample=Image.Resampling.LANCZOS))
                     for img in x])
    mask = TF.resize(mask, [h, w], interpolation=BICUBIC, antialias=True)
    if layout.crop is not None:
        x, mask = TF.center_crop(x, list(layout.crop)), TF.center_crop(mask, list(layout.crop))
    if sharpening > 0:
        x = cas_sharpen(x, sharpening)
    x, mask = x.movedim(1, -1), mask.squeeze(1)
    tiles, masks = [], []
    for y0, x0, y1, x1 in layout.grid.boxes:
        tiles.append(x[:, y0:y1, x0:x1])
        region = torch.zeros_like(mask)
        region[:, y0:y1, x0:x1] = mask[:, y0:y1, x0:x1]
        masks.append(region)
    return tiles, masks


@old_node("IPAdapterTiled")
class OldTiled:
    UNFOLD = False

    def run(self, model, ipadapter: OldAdapter, image: torch.Tensor, weight: float, weight_type: str,
            start_at: float, end_at: float, sharpening: float, embeds_scaling: str, combine_embeds: str = "concat",
            image_negative: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
            clip_vision: Any = None, encode_batch_size: int = 0):
        where = self.DISPLAY_NAME
        clip_of(ipadapter, clip_vision, where)  # a missing CLIP vision is named before the tiles are cut
        tiles, masks = old_tiles(image, attn_mask, sharpening, where=where)
        for tile, mask in zip(tiles, masks):
            (model,) = _advanced(where, model, ipadapter, tile, weight, weight_type, combine_embeds, start_at, end_at,
                                 embeds_scaling, image_negative, mask, clip_vision, unfold=self.UNFOLD,
                                 batch_size=encode_batch_size)
        return (model, torch.cat(tiles), torch.cat(masks))


@old_node("IPAdapterTiledBatch")
class OldTiledBatch(OldTiled):
    UNFOLD = True  # tile k of image i -> latent i
