"""Image tokens: the projected image prompt, the payload of an IPA_EMBEDS socket."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import IncompatibleError, InputError
from .spec import AdapterSpec

# the uncond image prompt of an encode: "reference" = as the adapter was trained, "black image" = the old pack's
UNCOND_MODES = ("reference", "black image")


@dataclass(frozen=True)
class ImageTokens:
    """Projected tokens of one or more reference images for one adapter.

    cond: (N_images, T, C) tokens of the image prompt. uncond: (1, T, C) tokens used for the negative (uncond) batch.
    adapter_id: fingerprint of the adapter whose projection made them (tokens only fit that adapter's to_k_ip/to_v_ip).
    Families whose projection also reads the model's timestep (``Family.step_projection``: InstantX SD3.5) cannot
    project at encode time: for them cond / uncond hold the encoder's features instead, (N_images, N, E) / (1, N, E)
    with E = spec.encoder_dim (SigLIP penultimate states; the reference uncond is zeros), and the patch path runs the
    projection at every model call. :func:`payload_width` says which; :meth:`check_fits` checks it.
    """

    cond: torch.Tensor
    uncond: torch.Tensor
    spec: AdapterSpec
    adapter_id: str
    adapter_name: str

    def check_fits(self, spec: AdapterSpec, adapter_id: str, adapter_name: str, *, where: str) -> None:
        """Raise IncompatibleError unless these tokens were made by the given adapter."""
        if adapter_id != self.adapter_id:
            raise IncompatibleError(
                f"{where}: the embeds were made with adapter '{self.adapter_name}' ({self.spec.describe()}) but the "
                f"adapter here is '{adapter_name}' ({spec.describe()}). Encode the image with the same adapter you apply."
            )
        width = payload_width(spec)
        what = "encoder features" if carries_features(spec) else "tokens"
        if any(t.dim() != 3 or t.shape[-1] != width for t in (self.cond, self.uncond)):
            raise IncompatibleError(
                f"{where}: the embeds hold cond {tuple(self.cond.shape)} / uncond {tuple(self.uncond.shape)}, but "
                f"'{adapter_name}' ({spec.describe()}) reads {what} (N, T, {width}). Encode the image again with "
                f"this adapter."
            )


def carries_features(spec: AdapterSpec) -> bool:
    """True where the embeds of ``spec``'s family hold encoder features, not tokens (Family.step_projection)."""
    from . import families

    return bool(getattr(families.family_of(spec), "step_projection", False))


def check_combinable(tokens: "ImageTokens", *, where: str) -> None:
    """InputError when ``tokens`` hold encoder features (InstantX SD3.5: projected at every step), which no combine
    node can mix as tokens."""
    if carries_features(tokens.spec):
        raise InputError(f"{where}: the embeds are for '{tokens.adapter_name}' ({tokens.spec.describe()}), whose "
                         f"projection depends on the sampling step: they hold the encoder's features, not tokens, so "
                         f"they cannot be combined here. Use one reference image per apply and chain the applies.")


def payload_width(spec: AdapterSpec) -> int:
    """The last axis of ImageTokens made for ``spec``: the encoder width for families that project at every step
    (:func:`carries_features`), else the token width (cross_attention_dim)."""
    return spec.encoder_dim if carries_features(spec) else spec.cross_attention_dim


def fingerprint(parts: dict[str, torch.Tensor]) -> str:
    """A cheap content fingerprint of an adapter's tensors: names, shapes and a few sampled values."""
    import hashlib

    h = hashlib.sha1()
    for key in sorted(parts):
        t = parts[key]
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        flat = t.reshape(-1)
        h.update(flat[:: max(1, flat.numel() // 16)][:16].float().numpy().tobytes())
    return h.hexdigest()[:16]
