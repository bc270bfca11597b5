"""HTTP route for the graph editor's weight preview (web/js/ipa.js): GET /ipa/site_weights.

The preview on IPA Apply (advanced) shows what the node's widgets do to each cross-attention site and over the
steps. The browser never re-implements the weight tables: it asks this route, which only calls the core functions
the apply node uses (ip_adapter_core.weighting / schedule on the reference site layouts of ip_adapter_core.sites).

Query (every parameter optional; defaults are the node's defaults):
    family              "sd15" | "sdxl": which reference layout (SD1.5: 16 sites, SDXL: 70 sites)
    weight_type         one of weighting.WEIGHT_TYPES                       ("linear")
    weight              float                                               (1.0)
    weight_composition  float, "style and composition" only                 (1.0)
    precise_boost       float, the precise types only                       (1.0)
    layer_weights       the node's layer_weights text                       ("")
    weight_schedule     one of schedule.SCHEDULES                           ("constant")
    schedule_values     the node's schedule_values text, "custom" only      ("")
    points              number of schedule samples over start_at..end_at    (21, 2..200)

Answer (JSON): {"family", "weight_type", "sites": [{"key": "output.1.3", "block", "t_idx", "layer": N, "weight",
"swapped"}, ...] in execution order (input, middle, output blocks), "schedule": [factor at progress k/(points-1)]}.
A value the node would refuse gives {"error": "<the same message the node would raise>"} and nothing else, with
HTTP 200: a half-typed layer_weights is an ordinary state of the editor, not a failed request (no console error).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import torch

from ..ip_adapter_core.errors import InputError
from ..ip_adapter_core.schedule import make_schedule, schedule_factor
from ..ip_adapter_core.sites import SD15_LAYOUT, SDXL_LAYOUT, expand_layout, layer_number
from ..ip_adapter_core.weighting import parse_layer_weights, site_weights, swapped_sites, transformer_indices

ROUTE = "/ipa/site_weights"
LAYOUTS = {"sd15": SD15_LAYOUT, "sdxl": SDXL_LAYOUT}
DEFAULT_POINTS = 21
MAX_POINTS = 200
_EXECUTION_ORDER = {"input": 0, "middle": 1, "output": 2}

log = logging.getLogger(__name__)


def _number(query: Mapping[str, str], name: str, default: float) -> float:
    raw = query.get(name, "")
    if raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InputError(f"input '{name}': {raw!r} is not a number.") from None
    if not math.isfinite(value):
        raise InputError(f"input '{name}': {raw!r} is not a finite number.")
    return value


def site_weight_preview(query: Mapping[str, str]) -> dict[str, Any]:
    """The route's answer for ``query`` (module docstring). Raises InputError on a bad value."""
    family = query.get("family", "sd15")
    if family not in LAYOUTS:
        raise InputError(f"input 'family': {family!r}; expected 'sd15' or 'sdxl'.")
    weight_type = query.get("weight_type", "linear")
    weight = _number(query, "weight", 1.0)
    weight_composition = _number(query, "weight_composition", 1.0)
    precise_boost = _number(query, "precise_boost", 1.0)
    points = int(_number(query, "points", DEFAULT_POINTS))
    if not 2 <= points <= MAX_POINTS:
        raise InputError(f"input 'points': {points}; expected 2 to {MAX_POINTS}.")
    sites = expand_layout(LAYOUTS[family])
    factors = parse_layer_weights(query.get("layer_weights", ""), sites)
    weights = site_weights(weight_type, sites, weight=weight, weight_composition=weight_composition,
                           layer_weights=factors, precise_boost=precise_boost)
    swapped = swapped_sites(weight_type, sites)
    schedule = make_schedule(query.get("weight_schedule", "constant"), query.get("schedule_values", ""))
    progress = torch.linspace(0.0, 1.0, points, dtype=torch.float64)
    curve = schedule_factor(schedule.kind, progress, values=schedule.values or None)
    rows = [{"key": ".".join(map(str, s.key)), "block": s.block, "t_idx": t, "layer": layer_number(i),
             "weight": weights[i], "swapped": i in swapped}
            for i, (s, t) in enumerate(zip(sites, transformer_indices(sites)))]
    rows.sort(key=lambda r: (_EXECUTION_ORDER[r["block"]], r["t_idx"], r["layer"]))
    return {"family": family, "weight_type": weight_type, "sites": rows, "schedule": [float(f) for f in curve]}


async def handle_site_weights(request: Any) -> Any:
    """aiohttp handler of GET /ipa/site_weights."""
    from aiohttp import web

    try:
        return web.json_response(site_weight_preview(request.rel_url.query))
    except InputError as e:
        return web.json_response({"error": str(e)})


def register() -> bool:
    """Add the route to ComfyUI's running PromptServer; False (nothing done) where there is none (tests that load
    the pack without a server)."""
    try:
        from server import PromptServer
    except ImportError:
        return False
    instance = getattr(PromptServer, "instance", None)
    if instance is None:
        return False
    if any(getattr(r, "path", None) == ROUTE and getattr(r, "method", None) == "GET" for r in instance.routes):
        # another import of the pack registered it: aiohttp refuses a second GET (and its HEAD) for one path at
        # start-up, which would stop the whole server
        log.warning("IPA: %s is already registered (the pack was imported twice); keeping the first", ROUTE)
        return False
    instance.routes.get(ROUTE)(handle_site_weights)
    log.debug("registered %s", ROUTE)
    return True
