"""Installing an apply plan on a model: the one entry point of every apply node, over every patch path.

An apply node reads its inputs and calls :func:`plan_for` (the controls validated once, against the model's sites,
before any image is encoded), gets its image tokens (encoder.py), and calls :func:`install`, which checks that the
tokens were made by the adapter, converts the start/end fractions to sigmas, builds the run (run.py) and hands it to the
patch path of the adapter's family (``Family.patch_path``): "attn2" = UNet cross-attention replacement (attn2.py),
"blocks" = DiT block patches (blocks.py: Flux double / single blocks), "joint" = SD3.5's MMDiT joint blocks (joint.py).
The sites are the family's (host.family_sites: the UNet's attn2 sites, or the DiT blocks of the family's
``site_blocks``). A path may also check the model itself at plan time (``check_model(model, adapter, where=...)``).
:func:`reweight` goes over every path, and over the applies recorded as silent (weight 0 everywhere: no patch).
"""
from __future__ import annotations

from typing import Any

from ...ip_adapter_core import families
from ...ip_adapter_core.compat import check_model
from ...ip_adapter_core.embeds import ImageTokens
from ...ip_adapter_core.errors import IncompatibleError
from ...ip_adapter_core.plan import ApplyPlan, make_plan
from . import attn2, blocks, joint
from .lora import add_adapter_lora
from .host import LoadedAdapter, family_sites, model_context_dim, percent_to_sigma
from .run import AdapterRun

PATHS = {"attn2": attn2, "blocks": blocks, "joint": joint}  # Family.patch_path -> the module with install(m, run, sites) and reweight(m, scaled)
SILENT_RUNS = "ipa_silent_runs"


def _path(adapter: LoadedAdapter, where: str):
    family = families.family_of(adapter.spec)
    path = PATHS.get(family.patch_path)
    if path is None:
        raise IncompatibleError(f"{where}: '{adapter.name}' is one of the {family.label}, which patch the model's "
                                f"'{family.patch_path}', which this version does not patch.")
    check_family = getattr(path, "check_family", None)  # a path that patches only some of its families' blocks
    if check_family is not None:
        check_family(adapter, where=where)
    return path


def plan_for(model: Any, adapter: LoadedAdapter, *, where: str, **controls: Any) -> ApplyPlan:
    """The validated plan of an apply node's ``controls`` (ip_adapter_core.plan.make_plan) for ``model``, with the
    adapter checked against the model: everything an apply checks before any image is encoded."""
    path = _path(adapter, where)
    sites = family_sites(model, families.family_of(adapter.spec))
    check_model(adapter.spec, sites, model_context_dim(model), adapter_name=adapter.name, where=f"{where}, input 'model'")
    check_host = getattr(path, "check_model", None)  # what the path needs of the model's own layers (joint.py's norms)
    if check_host is not None:
        check_host(model, adapter, where=f"{where}, input 'model'")
    plan = make_plan(sites, where=where, **controls)
    check_plan = getattr(path, "check_plan", None)  # what a path cannot do yet, refused by name
    if check_plan is not None:
        check_plan(plan, where=where)
    return plan


def install(model: Any, adapter: LoadedAdapter, tokens: ImageTokens, plan: ApplyPlan, *, where: str,
            notes: list[str] | None = None) -> Any:
    """A patched clone of ``model`` (the input is never changed) with ``plan``'s term from ``tokens``; ``plan`` comes
    from :func:`plan_for` on the same model and adapter (so only the tokens are checked here). Sites whose
    term is provably 0 get no patch; an apply that patches no site at all is still recorded under
    transformer_options[SILENT_RUNS], so IPA Re-weight finds it. An adapter file with a LoRA (FaceID) also gets
    its LoRA at ``plan.lora_strength`` through ComfyUI's weight patching (once per model, lora.add_adapter_lora),
    unless the plan is silent (weight 0 everywhere = the model without the adapter, LoRA included);
    ``notes`` (optional) receives what that did, for the node's text."""
    path = _path(adapter, where)
    sites = family_sites(model, families.family_of(adapter.spec))
    tokens.check_fits(adapter.spec, adapter.adapter_id, adapter.name, where=f"{where}, input 'embeds'")
    if len(plan.site_weights) != len(sites):
        raise ValueError(f"{where}: the plan was made for a model with {len(plan.site_weights)} sites, this one has "
                         f"{len(sites)}")
    run = AdapterRun(adapter, tokens, plan, sigma_start=percent_to_sigma(model, plan.start_at),
                     sigma_end=percent_to_sigma(model, plan.end_at))
    m = model.clone()
    active = plan.active_sites()
    if not active:
        to = m.model_options.setdefault("transformer_options", {})
        to[SILENT_RUNS] = tuple(to.get(SILENT_RUNS, ())) + (run,)
    path.install(m, run, [(i, sites[i].key) for i in active])
    # weight 0 everywhere turns the whole adapter off, its LoRA included (the graph without the adapter)
    lora_notes = add_adapter_lora(m, adapter, plan.lora_strength, where=where) if active else []
    if notes is not None:
        notes.extend(lora_notes)
    return m


def reweight(model: Any, factor: float) -> tuple[Any, int]:
    """A clone of ``model`` whose every IPA term uses its weights times ``factor``, and the number of adapter applies
    found (those that patch no site count too: scaling a zero term leaves it zero). Each apply is re-made once and
    shared by all its sites; foreign patches stay as they are."""
    m = model.clone()
    runs: dict[AdapterRun, AdapterRun] = {}

    def scaled(run: AdapterRun) -> AdapterRun:
        if run not in runs:
            runs[run] = run.reweighted(factor)
        return runs[run]

    for path in PATHS.values():
        path.reweight(m, scaled)
    return m, len(runs) + len(m.model_options.get("transformer_options", {}).get(SILENT_RUNS, ()))
