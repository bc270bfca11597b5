"""The FaceID adapters (h94/IP-Adapter-FaceID) for SD1.5 / SDXL, on a face model's 512-d embedding, patched into the
UNet's attn2 sites; FaceID and FaceID Plus also carry a LoRA (ip_adapter_core.lora; the host's LoRA route applies it).

Layouts, from tensors only (shared/reference/ip-adapter-formats.md §1, §1.1); C = the context width:

- ``faceid``: image_proj ``proj.0 [1024, 512]``, ``proj.2 [4·C, 1024]``, ``norm [C]`` (4 tokens) + LoRA keys;
- ``faceid_plus`` (v1, v2): the same MLP + ``perceiver_resampler.{proj_in [C, 1280], proj_out [C, C], norm_out,
  layers.i.*}`` (dim C, heads C/64, depth 4, no latents) + LoRA keys; v1 and v2 have identical tensors, so the version
  is the one fact read from the file name ("v2" in it -> v2);
- ``portrait`` (and v11): the MLP with 16 tokens per face, no LoRA;
- ``portrait_unnorm`` (SDXL): a Resampler with latents and ``proj_in [1280, 512]`` over the raw (unnormalised)
  embedding read as a length-1 sequence.

Kolors FaceID (a perceiver 4096 wide, in the ChatGLM text space) is claimed before this family and refused
(pending.py). Every projection here reads a :class:`FaceFeatures` (``IPAdapterModel.project(features)``); the host's
face stage builds it with :func:`face_features`, the reference uncond with :func:`zero_features`, and joins a
portrait's faces with :func:`concat_faces`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..errors import IncompatibleError, InputError, NotAnIPAdapterError
from ..lora import lora_rank
from ..projection import CastLayerNorm, CastLinear, MLPTokens, Resampler, perceiver_layers, run_perceiver
from ..spec import AdapterSpec
from .registry import EncoderNeed, Family, Preset, Tensors, register

NAME = "faceid"
FACE_LABEL = "a face model (insightface buffalo_l)"
FACE_DIM = 512  # insightface ArcFace embedding width (the portrait-unnorm signature)
# CLIP penultimate width a FaceID Plus perceiver reads -> the encoder of that width (the published ones read ViT-H)
CLIP_LABELS = {1280: "CLIP ViT-H", 1664: "CLIP ViT-bigG", 1024: "CLIP ViT-L"}
_PLUS = "perceiver_resampler."
_LORA_KEY = re.compile(r"^(\d+)\.to_(?:q|k|v|out)_lora\.(down|up)\.weight$")

__all__ = ["FaceFeatures", "FaceIDMLP", "FacePerceiverResampler", "ProjPlus", "FaceResampler", "face_features",
           "zero_features", "concat_faces", "shortcut_default", "claims", "detect", "build_projection",
           "encoder_need", "PRESETS", "FAMILY"]


# ---------------------------------------------------------------------------------------------- the input

@dataclass(frozen=True, eq=False)  # eq=False: tensors have no truth value; identity is what a cache may key on
class FaceFeatures:
    """What a FaceID projection reads, one row per face.

    embeds: (B, E) the face model's embedding (L2-normalised or raw, as the spec's encoder_input says).
    clip: (B, N, clip_dim) CLIP vision penultimate states of each aligned face crop: FaceID Plus only, else None.
    shortcut, shortcut_scale: FaceID Plus's ``out = x + shortcut_scale · resampler(x, clip)`` (v2) instead of
    ``out = resampler(x, clip)`` (v1); ignored by the other kinds.
    The projection computes in ``embeds``' dtype and device (``clip`` is cast to them).
    """

    embeds: torch.Tensor
    clip: torch.Tensor | None = None
    shortcut: bool = False
    shortcut_scale: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.embeds, torch.Tensor) or self.embeds.dim() != 2:
            found = tuple(self.embeds.shape) if isinstance(self.embeds, torch.Tensor) else type(self.embeds).__name__
            raise InputError(f"face embeddings must be a (faces, width) tensor, got {found}.")
        if self.clip is not None and (self.clip.dim() != 3 or self.clip.shape[0] != self.embeds.shape[0]):
            raise InputError(f"the CLIP states of the face crops are {tuple(self.clip.shape)}; expected "
                             f"({self.embeds.shape[0]}, tokens, width), one row per face embedding.")

    @property
    def batch(self) -> int:
        return int(self.embeds.shape[0])

    def to(self, *args, **kwargs) -> "FaceFeatures":
        """A copy with every tensor moved (``Tensor.to`` arguments: a device, a dtype, or both)."""
        return replace(self, embeds=self.embeds.to(*args, **kwargs),
                       clip=None if self.clip is None else self.clip.to(*args, **kwargs))


def _features(f) -> FaceFeatures:
    if not isinstance(f, FaceFeatures):
        raise InputError(f"a FaceID projection reads FaceFeatures (face embeddings), got {type(f).__name__}; CLIP "
                         f"vision features alone do not feed a FaceID adapter.")
    return f


def shortcut_default(spec: AdapterSpec) -> bool:
    """FaceID Plus v2 adds the perceiver's output to the id tokens (the shortcut); v1 does not."""
    return spec.kind == "faceid_plus" and spec.plus_version == "v2"


def face_features(spec: AdapterSpec, embeds: torch.Tensor, clip: torch.Tensor | None = None, *,
                  shortcut: bool | None = None, shortcut_scale: float = 1.0) -> FaceFeatures:
    """The input of ``spec``'s projection, its widths checked: embeds (B, encoder_dim); clip (B, N, clip_dim) for
    FaceID Plus and None for the other kinds. shortcut: None = the version's (v2 on, v1 off)."""
    if embeds.dim() != 2 or embeds.shape[1] != spec.encoder_dim:
        raise IncompatibleError(f"the face model gives embeddings shaped {tuple(embeds.shape)}, but the adapter "
                                f"({spec.describe()}) reads ({spec.encoder_dim},)-wide ones per face.")
    if spec.kind == "faceid_plus":
        if clip is None:
            raise InputError(f"the adapter ({spec.describe()}) also reads the CLIP vision states of the aligned "
                             f"face; none were given.")
        if clip.dim() != 3 or clip.shape[2] != spec.clip_dim:
            raise IncompatibleError(f"the CLIP vision states are shaped {tuple(clip.shape)}, but the adapter "
                                    f"({spec.describe()}) reads {spec.clip_dim}-wide penultimate states.")
    elif clip is not None:
        raise InputError(f"the adapter ({spec.describe()}) reads no CLIP vision states; got {tuple(clip.shape)}.")
    return FaceFeatures(embeds=embeds, clip=clip, shortcut=shortcut_default(spec) if shortcut is None else shortcut,
                        shortcut_scale=float(shortcut_scale))


def zero_features(spec: AdapterSpec, clip_zero: torch.Tensor | None = None, *, faces: int = 1,
                  shortcut: bool | None = None, shortcut_scale: float = 1.0) -> FaceFeatures:
    """The reference uncond's input (formats reference §5): zero face embeddings for ``faces`` faces; for FaceID Plus
    also ``clip_zero``, the CLIP penultimate states (1, N, clip_dim) of an all-zero normalised image (the host's
    encoder gives them), with the same shortcut and scale as the cond. None for the other kinds."""
    if faces < 1:
        raise InputError(f"zero_features needs at least one face, got {faces}.")
    embeds = torch.zeros(faces, spec.encoder_dim)
    clip = None
    if clip_zero is not None:
        if clip_zero.dim() != 3 or clip_zero.shape[0] != 1:
            raise InputError(f"clip_zero must be the (1, tokens, width) states of one zero image, got "
                             f"{tuple(clip_zero.shape)}.")
        clip = clip_zero.expand(faces, -1, -1)
        embeds = embeds.to(clip_zero)
    return face_features(spec, embeds, clip, shortcut=shortcut, shortcut_scale=shortcut_scale)


def concat_faces(tokens: torch.Tensor) -> torch.Tensor:
    """Portrait with n faces: the projection maps each face to its tokens, (n, T, C); the adapter attends over all of
    them as one image, (1, n·T, C), faces in order (the official ``ip_adapter_faceid_separate`` layout). The host
    joins a portrait's faces with this (cond and reference uncond alike)."""
    if tokens.dim() != 3 or tokens.shape[0] < 1:
        raise InputError(f"concat_faces takes (faces, tokens, width) tokens, got {tuple(tokens.shape)}.")
    return tokens.reshape(1, -1, tokens.shape[-1])


# ---------------------------------------------------------------------------------------------- projections

class FaceIDMLP(MLPTokens):
    """FaceID and portrait: projection.MLPTokens over the face embedding. FaceFeatures with embeds (B, E) ->
    (B, T, C)."""

    def id_tokens(self, e: torch.Tensor) -> torch.Tensor:
        return super().forward(e)

    def forward(self, f: FaceFeatures) -> torch.Tensor:
        return self.id_tokens(_features(f).embeds)


class FacePerceiverResampler(nn.Module):
    """The Resampler without its latents: the caller's latents (B, T, D) attend over proj_in(features (B, N, F)),
    same layers as the plus Resampler; -> norm_out(proj_out(latents)) (B, T, C)."""

    def __init__(self, *, feature_dim: int, dim: int, heads: int, depth: int, context_dim: int) -> None:
        super().__init__()
        self.proj_in = CastLinear(feature_dim, dim)
        self.proj_out = CastLinear(dim, context_dim)
        self.norm_out = CastLayerNorm(context_dim)
        self.layers = perceiver_layers(dim=dim, heads=heads, depth=depth)

    def forward(self, latents: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.norm_out(self.proj_out(run_perceiver(self.layers, self.proj_in(features), latents)))


class ProjPlus(FaceIDMLP):
    """FaceID Plus: x = LN(reshape(MLP(f), [B, T, C])); out = FacePerceiverResampler(latents=x, features=clip);
    with the shortcut (v2) out = x + s·out. FaceFeatures with embeds (B, E) and clip (B, N, clip_dim) -> (B, T, C)."""

    def __init__(self, *, encoder_dim: int, context_dim: int, num_tokens: int, clip_dim: int, heads: int,
                 depth: int) -> None:
        super().__init__(encoder_dim=encoder_dim, context_dim=context_dim, num_tokens=num_tokens)
        self.perceiver_resampler = FacePerceiverResampler(feature_dim=clip_dim, dim=context_dim, heads=heads,
                                                          depth=depth, context_dim=context_dim)

    def forward(self, f: FaceFeatures) -> torch.Tensor:
        f = _features(f)
        if f.clip is None:
            raise InputError("a FaceID Plus projection also reads the CLIP vision states of the aligned face; "
                             "FaceFeatures.clip is None.")
        x = self.id_tokens(f.embeds)
        out = self.perceiver_resampler(x, f.clip.to(x))
        return x + f.shortcut_scale * out if f.shortcut else out


class FaceResampler(Resampler):
    """Portrait unnorm: the plus Resampler over the raw face embedding as a length-1 sequence, (B, E) -> (B, 1, E)."""

    def forward(self, f: FaceFeatures) -> torch.Tensor:
        return super().forward(_features(f).embeds[:, None])


# ---------------------------------------------------------------------------------------------- detection

def _has_lora(ip_adapter: Tensors) -> bool:
    return any(_LORA_KEY.match(k) for k in ip_adapter)


def _raw_resampler(image_proj: Tensors) -> bool:
    proj_in = image_proj.get("proj_in.weight")
    return "latents" in image_proj and proj_in is not None and proj_in.dim() == 2 and proj_in.shape[1] == FACE_DIM


def _mlp_keys(image_proj: Tensors) -> bool:
    p = image_proj
    return "norm.weight" in p and "proj.2.weight" in p and "proj.weight" not in p and "proj.3.weight" not in p


def claims(image_proj: Tensors, ip_adapter: Tensors) -> bool:
    """LoRA keys, a perceiver_resampler, the id MLP (proj.0 / proj.2 / norm) or a Resampler over 512-wide input."""
    return (_has_lora(ip_adapter) or f"{_PLUS}proj_in.weight" in image_proj or _mlp_keys(image_proj)
            or _raw_resampler(image_proj))


def _shape(p: Tensors, key: str, ndim: int, expected: str, name: str) -> tuple[int, ...]:
    t = p.get(key)
    if t is None or t.dim() != ndim:
        found = "missing" if t is None else f"shaped {tuple(t.shape)}"
        raise NotAnIPAdapterError(f"{name} has a FaceID layout but 'image_proj.{key}' is {found} (expected "
                                  f"{expected}); the file is damaged or not an IP-Adapter.")
    return tuple(int(d) for d in t.shape)


def _expect(ok: bool, name: str, found: str, expected: str) -> None:
    if not ok:
        raise NotAnIPAdapterError(f"{name} has a FaceID layout but inconsistent shapes: {found} (expected "
                                  f"{expected}); the file is damaged or not an IP-Adapter.")


def _id_mlp(p: Tensors, name: str, ctx: int) -> tuple[int, int]:
    """(encoder width E, tokens T) of the id MLP proj.0 [2E, E], proj.2 [T·C, 2E], norm [C] with C = ctx."""
    hidden, enc = _shape(p, "proj.0.weight", 2, "a [1024, 512] matrix", name)
    rows, hidden2 = _shape(p, "proj.2.weight", 2, "a [tokens * context, 1024] matrix", name)
    (c,) = _shape(p, "norm.weight", 1, f"a [{ctx}] vector", name)
    _expect(hidden == 2 * enc, name, f"proj.0.weight {(hidden, enc)}", f"[2 * {enc}, {enc}]: the id MLP is 2x wide")
    _expect(hidden2 == hidden, name, f"proj.2.weight {(rows, hidden2)} after proj.0.weight {(hidden, enc)}",
            f"proj.2 to read the {hidden} outputs of proj.0")
    _expect(c == ctx, name, f"norm.weight width {c} with to_k_ip reading context {ctx}", "equal widths")
    _expect(rows % c == 0 and rows > 0, name, f"proj.2.weight {rows} rows with norm width {c}",
            "a multiple of the norm width (tokens * context)")
    return enc, rows // c


def _depth(p: Tensors, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[1] for k in p if k.startswith(prefix + "layers.")})


def _perceiver(p: Tensors, name: str, prefix: str, ctx: int, dim: int | None) -> tuple[int, int, int, int]:
    """(dim, feature width, heads, depth) of a Perceiver under ``prefix``, its output ``ctx`` wide."""
    d, feat = _shape(p, f"{prefix}proj_in.weight", 2, "a [dim, features] matrix", name)
    out_rows, out_in = _shape(p, f"{prefix}proj_out.weight", 2, f"a [{ctx}, dim] matrix", name)
    q_rows, q_in = _shape(p, f"{prefix}layers.0.0.to_q.weight", 2, "a [heads * 64, dim] matrix", name)
    depth = _depth(p, prefix)
    if dim is not None:
        _expect(d == dim, name, f"{prefix}proj_in.weight {(d, feat)} with id tokens {dim} wide",
                f"the perceiver as wide as the id tokens ({dim})")
    _expect(out_rows == ctx and out_in == d, name, f"{prefix}proj_out.weight {(out_rows, out_in)}", f"[{ctx}, {d}]")
    _expect(q_rows % 64 == 0 and q_rows > 0 and q_in == d, name, f"{prefix}layers.0.0.to_q.weight {(q_rows, q_in)}",
            f"[heads * 64, {d}]")
    return d, feat, q_rows // 64, depth


def _lora_checked(ip_adapter: Tensors, num_sites: int, name: str) -> int | None:
    """The LoRA's rank (ip_adapter_core.lora.lora_rank) once every LoRA key is a 2-D matrix of one rank that
    addresses one of the file's 2 · num_sites attention processors; None without LoRA keys."""
    rank, first = None, None
    for key, t in ip_adapter.items():
        m = _LORA_KEY.match(key)
        if not m:
            continue
        if t.dim() != 2:
            raise NotAnIPAdapterError(f"{name}: LoRA key 'ip_adapter.{key}' is shaped {tuple(t.shape)}; expected a "
                                      f"2-D matrix ([rank, in] down, [out, rank] up). The file is damaged.")
        r = int(t.shape[0] if m[2] == "down" else t.shape[1])
        if rank is not None and r != rank:
            raise NotAnIPAdapterError(f"{name}: LoRA key 'ip_adapter.{key}' {tuple(t.shape)} has rank {r}, but "
                                      f"'ip_adapter.{first}' has rank {rank}; expected one rank. The file is damaged.")
        rank, first = r, first or key
        if int(m[1]) >= 2 * num_sites:
            raise NotAnIPAdapterError(f"{name}: LoRA key 'ip_adapter.{key}' addresses attention processor {m[1]}, "
                                      f"but the file's {num_sites} cross-attention layers make processors 0-"
                                      f"{2 * num_sites - 1}. The file is damaged.")
    return None if rank is None else lora_rank(ip_adapter)


def detect(image_proj: Tensors, ip_adapter: Tensors, name: str) -> AdapterSpec:
    # At call time: importing sd_unet registers it, and it is asked after this family (families/__init__.py).
    from .sd_unet import site_layout

    site_dims, ctx = site_layout(ip_adapter, name)
    p = image_proj
    rank = _lora_checked(ip_adapter, len(site_dims), name)
    common = dict(cross_attention_dim=ctx, site_dims=site_dims, adapter_family=NAME, lora_rank=rank)
    if f"{_PLUS}proj_in.weight" in p:
        enc, tokens = _id_mlp(p, name, ctx)
        _, clip_dim, heads, depth = _perceiver(p, name, _PLUS, ctx, ctx)
        return AdapterSpec(kind="faceid_plus", encoder_input="face_normed", encoder_dim=enc, num_tokens=tokens,
                           resampler_dim=ctx, resampler_heads=heads, resampler_depth=depth, clip_dim=clip_dim,
                           plus_version="v2" if "v2" in name.lower() else "v1", **common)
    if _mlp_keys(p):
        enc, tokens = _id_mlp(p, name, ctx)
        # 4 tokens (with its LoRA): FaceID; 16 per face, no LoRA: portrait (a FaceID stripped of its LoRA stays one)
        kind = "faceid" if rank is not None or tokens == 4 else "portrait"
        return AdapterSpec(kind=kind, encoder_input="face_normed", encoder_dim=enc, num_tokens=tokens, **common)
    if _raw_resampler(p):
        (_, tokens, dim) = _shape(p, "latents", 3, "a [1, tokens, dim] tensor", name)
        d, enc, heads, depth = _perceiver(p, name, "", ctx, dim)
        return AdapterSpec(kind="portrait_unnorm", encoder_input="face_raw", encoder_dim=enc, num_tokens=tokens,
                           resampler_dim=d, resampler_heads=heads, resampler_depth=depth, **common)
    what = "FaceID LoRA keys" if _has_lora(ip_adapter) else "FaceID keys"
    raise NotAnIPAdapterError(
        f"{name} has {what} but an image projection of no FaceID layout (keys: {', '.join(sorted(p)[:6])}...); "
        f"expected proj.0 / proj.2 / norm (FaceID, portrait), those and perceiver_resampler.* (FaceID Plus), or a "
        f"Resampler over {FACE_DIM}-wide face embeddings (portrait unnorm). The file is damaged or not an IP-Adapter.")


def build_projection(spec: AdapterSpec) -> nn.Module:
    ctx, enc, tokens = spec.cross_attention_dim, spec.encoder_dim, spec.num_tokens or 0
    if spec.kind in ("faceid", "portrait"):
        return FaceIDMLP(encoder_dim=enc, context_dim=ctx, num_tokens=tokens)
    if spec.kind == "faceid_plus":
        return ProjPlus(encoder_dim=enc, context_dim=ctx, num_tokens=tokens, clip_dim=spec.clip_dim or 0,
                        heads=spec.resampler_heads or 0, depth=spec.resampler_depth or 0)
    if spec.kind == "portrait_unnorm":
        return FaceResampler(encoder_dim=enc, dim=spec.resampler_dim or 0, heads=spec.resampler_heads or 0,
                             depth=spec.resampler_depth or 0, num_queries=tokens, context_dim=ctx)
    raise NotAnIPAdapterError(f"the {NAME} family has no projection of kind {spec.kind!r}")


def encoder_need(spec: AdapterSpec) -> EncoderNeed:
    """A face model's 512-d embedding, L2-normalised ("normed") or raw (portrait unnorm); FaceID Plus also reads the
    CLIP vision penultimate states of the aligned face (``clip``)."""
    clip = None
    if spec.kind == "faceid_plus":
        width = spec.clip_dim or 0
        clip = EncoderNeed(kind="clip_vision", output="penultimate", width=width,
                           label=CLIP_LABELS.get(width, f"a CLIP vision model with {width}-wide hidden states"))
    label = FACE_LABEL if clip is None else f"{FACE_LABEL} + {clip.label}"
    return EncoderNeed(kind="face", output="raw" if spec.encoder_input == "face_raw" else "normed",
                       width=spec.encoder_dim, label=label, clip=clip)


# ---------------------------------------------------------------------------------------------- presets

def _kind(kind: str):
    return lambda s: s.adapter_family == NAME and s.kind == kind


_H = "CLIP ViT-H"
PRESETS: dict[str, Preset] = {
    "faceid": Preset("a FaceID adapter", _kind("faceid"), FACE_LABEL,
                     {"sd15": "ip-adapter-faceid_sd15.bin", "sdxl": "ip-adapter-faceid_sdxl.bin"}),
    # v1 and v2 have the same tensors: the name orders them (v1 first here, v2 first below)
    "faceid plus": Preset("a FaceID Plus adapter", _kind("faceid_plus"), _H,
                          {"sd15": "ip-adapter-faceid-plus_sd15.bin"}, avoid=("v2",)),
    "faceid plus v2": Preset("a FaceID Plus v2 adapter", _kind("faceid_plus"), _H,
                             {"sd15": "ip-adapter-faceid-plusv2_sd15.bin", "sdxl": "ip-adapter-faceid-plusv2_sdxl.bin"},
                             prefer=("v2",)),
    # portrait and portrait-v11 have the same tensors: v11 first
    "faceid portrait": Preset("a FaceID Portrait adapter", _kind("portrait"), FACE_LABEL,
                              {"sd15": "ip-adapter-faceid-portrait-v11_sd15.bin",
                               "sdxl": "ip-adapter-faceid-portrait_sdxl.bin"}, prefer=("v11",)),
    # told apart by its tensors (a Resampler, not the MLP): no name word needed
    "faceid portrait unnorm": Preset("a FaceID Portrait unnorm adapter (raw face embedding)",
                                     _kind("portrait_unnorm"), FACE_LABEL,
                                     {"sdxl": "ip-adapter-faceid-portrait_sdxl_unnorm.bin"}),
}

FAMILY = register(Family(name=NAME, label="FaceID adapters", claims=claims, detect=detect,
                         build_projection=build_projection, encoder_need=encoder_need, patch_path="attn2",
                         presets=PRESETS))
