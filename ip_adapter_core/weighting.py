"""Per-site weights as data: the incumbent's weight types, user layer weights and the precise types' cond/uncond swap.

Everything here is a pure function of a model's sites (checkpoint order, :func:`ip_adapter_core.sites.expand_layout`
or the host's site list) and returns one value per site in that same order, so position i is the site that reads
checkpoint layer N = 2i + 1. The host folds these weights into each site's cached K'/V' once per run.

Layer index ``t_idx`` (the incumbent's ``transformer_index``): SpatialTransformers counted in execution order,
input blocks -> middle block -> output blocks; every transformer block of one SpatialTransformer shares its index.
``L`` is the number of SpatialTransformers (16 for SD1.5, 11 for SDXL), taken from the sites, never from the family.

The layer-map types (style transfer, composition, ...) are the incumbent's tables: the SDXL table for layouts whose
SpatialTransformers hold more than one transformer block (SDXL, Kolors), else the SD1.5 table. Map entries whose
index the model does not have are ignored; sites missing from a map get weight 0.

DiT blocks (Flux: sites ("double", i, 0); SD3.5: ("joint", i, 0)): each block is one "layer" (t_idx = its index,
double blocks before single ones), so the curve types (linear, ease in / out / in-out, reverse in-out) ramp over the
blocks and layer weights address blocks by index (``3:0.5``) or key (``double.3:0.5``, ``joint.3:0.5``); the types
that name UNet parts are refused.

Layer weights syntax (:func:`parse_layer_weights`): entries ``target:value`` separated by commas or new lines;
a target is
  ``3``            a SpatialTransformer by its t_idx (every transformer block inside it), as the incumbent's
                   Mad Scientist node numbers them;
  ``N29``          one site by its checkpoint layer number N (1, 3, 5, ...);
  ``output.1.3``   one site by its key (block.block_id.transformer_index);
  ``output.1``     every site of one SpatialTransformer by its block and block id.
Later entries override earlier ones; sites not addressed get 0. Example: ``"3:1.0, 6:0.5, N29:0"``. A plain list of
numbers, one per SpatialTransformer (or DiT block) in order, gives each its factor: ``"1, 0.9, 0.8, ..."`` (19
values for Flux's double blocks, as XLabs' per-block strengths).
"""
from __future__ import annotations

import logging
import re
from typing import Sequence

from .errors import InputError, check_choice
from .numbers import parse_numbers, split_entries
from .sites import Site, layer_number

log = logging.getLogger(__name__)

WEIGHT_TYPES = (
    "linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output", "weak middle",
    "strong middle", "style transfer", "composition", "strong style transfer", "style and composition",
    "style transfer precise", "composition precise",
)

# DiT blocks: Flux's order (double, then single); SD3.5's MMDiT has joint blocks only
_EXECUTION_ORDER = {"input": 0, "middle": 1, "output": 2, "double": 3, "single": 4, "joint": 5}
DIT_BLOCKS = frozenset({"double", "single", "joint"})
# The types that read only the sites' order (a curve over the blocks), so they mean the same on a DiT's blocks; the
# others name UNet parts (input / middle / output, the style and composition SpatialTransformers).
ORDER_TYPES = ("linear", "ease in", "ease out", "ease in-out", "reverse in-out")
_WEAK = {"weak input": ("input",), "weak middle": ("middle",), "weak output": ("output",),
         "strong middle": ("input", "output")}


def transformer_indices(sites: Sequence[Site]) -> list[int]:
    """t_idx of every site (same order as ``sites``): the rank of its SpatialTransformer in execution order."""
    blocks = sorted({(s.block, s.block_id) for s in sites}, key=lambda b: (_EXECUTION_ORDER[b[0]], b[1]))
    rank = {b: i for i, b in enumerate(blocks)}
    return [rank[(s.block, s.block_id)] for s in sites]


def num_transformers(sites: Sequence[Site]) -> int:
    """L: the number of SpatialTransformers (distinct (block, block_id)) among ``sites``."""
    return len({(s.block, s.block_id) for s in sites})


def is_sdxl_shaped(sites: Sequence[Site]) -> bool:
    """True when some SpatialTransformer holds more than one transformer block (SDXL, Kolors): the SDXL tables apply."""
    return any(s.index > 0 for s in sites)


def _layer_map(weight_type: str, sdxl: bool, n: int, *, w: float, wc: float, bw: float) -> dict[int, float]:
    """The incumbent's {t_idx: weight} table of a layer-map type (IPAdapterPlus.py:303-338); n = L ("every layer").
    bw: the weight of the layers the precise types work against (the incumbent's style_boost / composition_boost)."""
    if sdxl:
        return {
            "style transfer": {6: w},
            "composition": {3: w},
            "strong style transfer": {t: w for t in range(n) if t != 3},
            "style and composition": {3: wc, 6: w},
            "style transfer precise": {3: bw, 6: w},
            "composition precise": {**{t: 0.1 * bw for t in range(n)}, 3: w, 6: bw},
        }[weight_type]
    style = {t: w for t in (*range(0, 4), *range(9, n))}
    return {
        "style transfer": style,
        "composition": {4: 0.25 * w, 5: w},
        "strong style transfer": {t: w for t in range(n) if t not in (4, 5)},
        "style and composition": {**style, 4: 0.25 * wc, 5: wc},
        "style transfer precise": {**style, 4: 0.25 * bw, 5: bw},
        "composition precise": {**{t: bw for t in range(n)}, **{t: 0.1 * bw for t in (6, 7, 8)}, 4: 0.25 * w,
                                5: w},
    }[weight_type]


def _curve(weight_type: str, t: int, n: int) -> float:
    half = n / 2
    return {
        "linear": 1.0,
        "ease in": 0.05 + 0.95 * (1 - t / n),
        "ease out": 0.05 + 0.95 * (t / n),
        "ease in-out": 0.05 + 0.95 * (1 - abs(t - half) / half),
        "reverse in-out": 0.05 + 0.95 * (abs(t - half) / half),
    }[weight_type]


def check_weight_type(weight_type: str) -> None:
    check_choice(weight_type, WEIGHT_TYPES, input_name="weight_type", what="weight type")


def check_dit_weight_type(weight_type: str, sites: Sequence[Site]) -> None:
    """On a DiT's blocks (Flux, SD3.5) only the curve types apply: each block is one "layer", in the model's order (the
    XLabs begin -> end ramps); the UNet types name parts a DiT does not have."""
    if weight_type not in ORDER_TYPES and any(s.block in DIT_BLOCKS for s in sites):
        raise InputError(f"input 'weight_type': '{weight_type}' names UNet layers (SD1.5 / SDXL); on this DiT "
                         f"model use one of {', '.join(ORDER_TYPES)} (a curve over its blocks), or layer_weights.")


def site_weights(weight_type: str, sites: Sequence[Site], *, weight: float, weight_composition: float = 1.0,
                 layer_weights: Sequence[float] | None = None, precise_boost: float = 1.0,
                 boost_weight: float | None = None) -> tuple[float, ...]:
    """The effective weight of every site (same order as ``sites``).

    ``layer_weights``: per-site factors from :func:`parse_layer_weights`; when given they replace the weight type's
    curve or map (weight * factor per site), as the incumbent's Mad Scientist node does; only the precise types'
    swap (:func:`swapped_sites`) still applies. ``weight_composition`` is used by "style and composition" only.
    ``precise_boost`` (the precise types only) multiplies the weight of the layers the precise type works against:
    the composition layers of "style transfer precise", every layer but the composition ones of "composition
    precise" (the incumbent's style_boost / composition_boost, given as a factor on ``weight``); 1 = as weight.
    ``boost_weight``: that boosted weight itself instead (the incumbent's absolute style_boost / composition_boost,
    which acts also where ``weight`` is 0); None = ``precise_boost * weight``.
    "linear" gives exactly ``weight`` everywhere.
    """
    check_weight_type(weight_type)
    check_dit_weight_type(weight_type, sites)
    if layer_weights is not None:
        if len(layer_weights) != len(sites):
            raise InputError(f"layer weights: {len(layer_weights)} values for {len(sites)} sites.")
        return tuple(weight * f for f in layer_weights)
    t_idx = transformer_indices(sites)
    if weight_type in _WEAK:
        return tuple(weight * 0.2 if s.block in _WEAK[weight_type] else weight for s in sites)
    if weight_type in ORDER_TYPES:
        n = num_transformers(sites)
        return tuple(weight * _curve(weight_type, t, n) for t in t_idx)
    table = _layer_map(weight_type, is_sdxl_shaped(sites), num_transformers(sites), w=weight, wc=weight_composition,
                       bw=precise_boost * weight if boost_weight is None else boost_weight)
    return tuple(table.get(t, 0.0) for t in t_idx)


def swapped_sites(weight_type: str, sites: Sequence[Site]) -> frozenset[int]:
    """Positions of the sites where the precise types put the cond tokens on the uncond chunk and zero tokens on the
    cond chunk (CrossAttentionPatch.py:105-111), so CFG pushes away from the image there.

    "style transfer precise": the composition layers (SDXL t_idx 3; SD1.5 t_idx 4, 5); "composition precise": every
    other layer. Empty for every other type.
    """
    check_weight_type(weight_type)
    check_dit_weight_type(weight_type, sites)
    if weight_type not in ("style transfer precise", "composition precise"):
        return frozenset()
    composition = {3} if is_sdxl_shaped(sites) else {4, 5}
    inside = weight_type == "style transfer precise"
    return frozenset(i for i, t in enumerate(transformer_indices(sites)) if (t in composition) == inside)


_ENTRY = re.compile(r"^(?:(?P<t>\d+)|[Nn](?P<n>\d+)|(?P<block>input|middle|output|double|single|joint)\.(?P<id>\d+)(?:\.(?P<index>\d+))?)"
                    r"\s*:\s*(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)$")
_NUMBER = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?:[\s;]+[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)*$")
_SYNTAX = ("entries 'target:value' separated by commas or new lines, where target is a SpatialTransformer index "
           "('3'), a checkpoint layer number ('N29') or a site key ('output.1.3' or 'output.1'), e.g. '3:1.0, 6:0.5'")


def parse_layer_weights(text: str, sites: Sequence[Site], *, skip_missing: bool = False) -> tuple[float, ...] | None:
    """A user string (syntax in the module docstring) -> one factor per site (same order as ``sites``), or None for
    an empty string. Sites not addressed get 0; later entries override earlier ones.

    Raises InputError naming the bad entry and the expected syntax, or the valid range of an index; with
    ``skip_missing`` (the compatibility mode "ComfyUI_IPAdapter_plus") a ``t:value`` entry past the model's last
    SpatialTransformer is logged and skipped instead, as the incumbent ignores it (an SDXL string on SD1.5 runs).
    """
    entries = split_entries(text)
    if not entries:
        return None
    t_idx = transformer_indices(sites)
    n_st = num_transformers(sites)
    if all(_NUMBER.match(e) for e in entries):  # a plain list: one factor per SpatialTransformer / DiT block
        values = parse_numbers(text, where="input 'layer_weights'", example="1.0, 0.8, 0.6")
        if len(values) != n_st:
            raise InputError(f"input 'layer_weights': {len(values)} plain values, but this model has {n_st} "
                             f"{'blocks' if any(s.block in DIT_BLOCKS for s in sites) else 'SpatialTransformers'}; "
                             f"give one value each, or {_SYNTAX}.")
        return tuple(values[t] for t in t_idx)
    factors = [0.0] * len(sites)
    for entry in entries:
        m = _ENTRY.match(entry)
        if m is None:
            raise InputError(f"input 'layer_weights': cannot read {entry!r}; expected {_SYNTAX}.")
        value = float(m["value"])
        if m["t"] is not None:
            t = int(m["t"])
            if t >= n_st and skip_missing:
                log.warning("layer_weights %r: this model has SpatialTransformers 0-%d; entry skipped, as the old "
                            "pack does", entry, n_st - 1)
                continue
            if t >= n_st:
                raise InputError(f"input 'layer_weights': {entry!r} addresses SpatialTransformer {t}, but this model "
                                 f"has {n_st} (indices 0-{n_st - 1}).")
            hit = [i for i, ti in enumerate(t_idx) if ti == t]
        elif m["n"] is not None:
            n = int(m["n"])
            hit = [i for i in range(len(sites)) if layer_number(i) == n]
            if not hit:
                raise InputError(f"input 'layer_weights': {entry!r}: this model's checkpoint layers are the odd "
                                 f"numbers N1-N{layer_number(len(sites) - 1)}.")
        else:
            bid, index = int(m["id"]), m["index"]
            hit = [i for i, s in enumerate(sites) if s.block == m["block"] and s.block_id == bid
                   and (index is None or s.index == int(index))]
            if not hit:
                raise InputError(f"input 'layer_weights': {entry!r} names no cross-attention site of this model; "
                                 f"its sites are {', '.join('.'.join(map(str, s.key)) for s in sites)}.")
        for i in hit:
            factors[i] = value
    return tuple(factors)
