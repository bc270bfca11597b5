"""The family axis: every kind of adapter file this package knows, one registered :class:`Family` each.

A family is data plus functions, all of them pure torch:
- ``claims(image_proj, ip_adapter)``: its key signature (names only, cheap), so detection stays tensor-only;
- ``detect(image_proj, ip_adapter, name)``: the :class:`~ip_adapter_core.spec.AdapterSpec` of a file it claims;
- ``build_projection(spec)``: the projection module (uninitialised, built on meta and assigned the file's tensors);
- ``encoder_need(spec)``: what its encoder stage must provide (:class:`EncoderNeed`: kind, output, width);
- ``patch_path``: how the host layer patches a model for it ("attn2": UNet cross-attention replacement;
  "blocks": DiT block patches, for Flux; "joint": SD3.5's MMDiT joint blocks);
- ``load_model`` (optional): the loaded adapter module of a family whose per-site layers are not to_k_ip / to_v_ip
  (XLabs Flux); without it, projection.IPAdapterModel.from_parts;
- ``site_blocks`` (DiT families): which blocks are its sites ("double" for XLabs Flux, "joint" for SD3.5); () = the
  UNet's attn2 sites;
- ``step_projection``: the projection reads the model's timestep too (InstantX SD3.5), so embeds carry the encoder
  features and the patch path projects them at every model call;
- ``presets``: its unified-loader presets.
Families that are recognised but not implemented yet (Kolors FaceID) register with ``implemented=False``:
their ``detect`` raises UnsupportedAdapterError with what to use instead, so a user is told what the file is.

:func:`detect` asks the families in registration order (the unimplemented ones' signatures first, then FaceID, each
narrower than the next) and fails, for a file none claims, with the list of families that were tried. New families
come in as one module here plus one module per host layer; nothing else in core changes.
"""
from __future__ import annotations

from .registry import (EncoderNeed, Family, Preset, Tensors, build_projection, detect, encoder_need, family_of,
                       get, presets, register, registered, unregister)

# The built-in families, in the order they are asked.
from . import flux_instantx as _flux_instantx  # noqa: E402  (InstantX Flux: sites 0..56, asked first, before the
#   SD / FaceID families whose to_k_ip sites are numbered 1, 3, 5, ... and whose MLP keys it shares)
from . import pending as _pending  # noqa: E402  (Kolors FaceID: recognised, not implemented yet)
from . import sd3 as _sd3  # noqa: E402  (InstantX SD3.5: asked before sd-unet, which its {i}.to_k_ip keys fit)
from . import faceid as _faceid  # noqa: E402  (FaceID, FaceID Plus, portrait: their files have to_k_ip keys too)
from . import sd_unet as _sd_unet  # noqa: E402  (SD1.5 / SDXL base, plus, full face)
from . import flux as _flux  # noqa: E402  (XLabs Flux v1 / v2: double_blocks.* keys, no to_k_ip)
# the modules that registered the built-in families, in the order asked
BUILT_IN = (_flux_instantx, _pending, _sd3, _faceid, _sd_unet, _flux)

from .faceid import FaceFeatures, concat_faces, face_features, zero_features  # noqa: E402

__all__ = ["EncoderNeed", "FaceFeatures", "Family", "Preset", "Tensors", "build_projection", "concat_faces", "detect",
           "encoder_need", "face_features", "family_of", "get", "presets", "register", "registered", "unregister",
           "zero_features"]
