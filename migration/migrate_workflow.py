"""Convert a saved workflow that uses ComfyUI_IPAdapter_plus (cubiq) nodes to this pack's nodes.

Both formats: the UI format the editor saves (nodes + links; positions, sizes, titles and colours are kept) and the
API format (POST /prompt). Every old node that has a counterpart is replaced in place (same node id); a few get a
helper node in front of them (an IPA Encode Image for a negative image, combine_embeds or encode_batch_size). Apply
nodes get ``compatibility`` = "ComfyUI_IPAdapter_plus" (the old pack's black-image uncond and no middle-block term),
so a converted workflow gives the old pack's images where the report says "converted". Nodes without a counterpart
(FaceID, InsightFace, weights strategies, ...) are left in place and reported; other packs' nodes are not touched.
Converting a converted workflow changes nothing. docs/MIGRATION.md has the full mapping.

    python3 scripts/migrate_workflow.py old.json -o new.json [--strict]

Pure Python (no ComfyUI import); importable: ``migrate(workflow) -> (new_workflow, report)``. The mapping itself
(the old and new nodes' inputs and the value tables) is in migration/schemas.py, one plan per old node in
migration/plans.py.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from typing import Any, Callable

from .plans import ClipOf, Entry, New, Old, Plan, Src, plan_node, regional_plans
from .schemas import OLD_INPUTS, OLD_TYPES, SEED_WIDGETS, TARGETS, W, Target, available_nodes

__all__ = ["migrate", "report_text", "main", "available_nodes", "OLD_TYPES", "TARGETS", "W", "Entry"]

# ---------------------------------------------------------------------------------------------- the graph rewrite

MISSING = object()


class _Rewrite:
    """Shared by both formats: plans for the old nodes, new ids, and how old outputs map to new ones."""

    def __init__(self, olds: dict[Any, Old], available: set[str], next_id: Callable[[], Any],
                 consumers: dict[tuple[Any, int], list[Any]]):
        encoders = {i: True for i, o in olds.items() if o.type == "IPAdapterEncoder"}
        self.olds = olds
        faceid_loaders = {i: o.values for i, o in olds.items() if o.type == "IPAdapterUnifiedLoaderFaceID"}
        self.plans: dict[Any, Plan | str] = {i: plan_node(o, available, encoders, faceid_loaders)
                                             for i, o in olds.items()}
        self.plans.update(regional_plans(olds, consumers, available))
        self.ids: dict[tuple[Any, str], Any] = {}
        self.outputs: dict[tuple[Any, int], tuple[Any, int, str] | str] = {}
        self.companions: dict[tuple[Any, int], tuple[Any, int, str]] = {}
        for oid, plan in self.plans.items():
            if isinstance(plan, str):
                continue
            for key in plan.nodes:
                self.ids[(oid, key)] = oid if key == "main" else next_id()
            for slot, out in plan.outputs.items():
                self.outputs[(oid, slot)] = out if isinstance(out, str) else self._out(oid, plan, *out)
            for slot, (key, new_slot) in plan.companions.items():
                self.companions[(oid, slot)] = self._out(oid, plan, key, new_slot)

    def _out(self, oid: Any, plan: Plan, key: str, slot: int) -> tuple[Any, int, str]:
        ntype = plan.nodes[key][0]
        return self.ids[(oid, key)], slot, TARGETS[ntype].outputs[slot][1]

    def converted(self) -> dict[Any, Plan]:
        return {i: p for i, p in self.plans.items() if not isinstance(p, str)}

    def source(self, oid: Any, value: Any, origin: Callable[[Src], Src]) -> tuple[Any, int, str | None] | None:
        """Where a planned input's link now comes from: (node id, slot, type or None if unchanged), or None."""
        if isinstance(value, New):
            return self._out(oid, self.plans[oid], value.key, value.slot)
        if isinstance(value, ClipOf):
            return self.companions.get(_key(origin(value.src)))
        mapped = self.outputs.get(_key(value), MISSING)
        if mapped is MISSING:
            return value.node, value.slot, None
        if isinstance(mapped, str):
            self.plans[oid].notes.append(f"a link from node {value.node} dropped ({mapped})")
            return None
        return mapped

    def entries(self, kinds: dict[Any, str]) -> list[Entry]:
        out = []
        for oid, plan in self.plans.items():
            if isinstance(plan, str):
                out.append(Entry(oid, kinds[oid], "unmapped", None, [plan]))
            else:
                new = " + ".join(t for k, (t, _) in sorted(plan.nodes.items(), key=lambda kv: kv[0] != "main"))
                new = new or "(removed)"
                out.append(Entry(oid, kinds[oid], "approximate" if plan.notes else "converted", new,
                                 plan.notes + plan.info))
        return out


def _key(src: Src) -> tuple[Any, int]:
    return src.node, src.slot


def _widget_values(values: Any, names: list[str]) -> dict[str, Any]:
    if isinstance(values, dict):
        return {n: values[n] for n in names if n in values}
    return dict(zip(names, values or []))


def _widget_value(target: Target, name: str, inputs: dict[str, Any], old: Old) -> Any:
    """The stored value of a widget; a widget driven by a link keeps the old node's value of that name."""
    value = inputs.get(name)
    if isinstance(value, (Src, New, ClipOf)):
        value = old.values.get(name)
    return target.defaults.get(name, "") if value is None else value


# ---------------------------------------------------------------------------------------------- API format

def _migrate_api(api: dict, available: set[str]) -> tuple[dict, list[Entry]]:
    olds = {}
    for nid, node in api.items():
        ct = node.get("class_type") if isinstance(node, dict) else None
        if ct in OLD_TYPES:
            inputs = node.get("inputs", {})
            links = {k: Src(str(v[0]), int(v[1])) for k, v in inputs.items() if _is_api_link(v)}
            values = {k: v for k, v in inputs.items() if not _is_api_link(v)}
            olds[nid] = Old(nid, ct, values, links)
    if not olds:
        return copy.deepcopy(api), []
    used = set(api) | {v[0] for n in api.values() if isinstance(n, dict)
                       for v in (n.get("inputs") or {}).values() if _is_api_link(v)}
    counter = iter(range(max([int(k) for k in used if str(k).isdigit()] + [0]) + 1, 10 ** 9))
    consumers: dict[tuple[Any, int], list[Any]] = {}
    for nid, node in api.items():
        for value in (node.get("inputs") or {}).values() if isinstance(node, dict) else ():
            if _is_api_link(value):
                consumers.setdefault((value[0], value[1]), []).append(nid)
    rw = _Rewrite(olds, available, lambda: str(next(counter)), consumers)
    out = {k: copy.deepcopy(v) for k, v in api.items() if k not in rw.converted()}
    created = set()
    for oid, plan in rw.converted().items():
        for key, (ntype, inputs) in plan.nodes.items():
            target = TARGETS[ntype]
            node = {"class_type": ntype, "inputs": {}, "_meta": {"title": target.display}}
            for name, kind in target.inputs:
                value = inputs.get(name)
                if isinstance(value, (Src, New, ClipOf)):
                    src = rw.source(oid, value, lambda s: s)
                    if src is not None:
                        node["inputs"][name] = [str(src[0]), src[1]]
                elif kind == W and name in target.defaults or value is not None:
                    node["inputs"][name] = _widget_value(target, name, inputs, olds[oid])
            out[rw.ids[(oid, key)]] = node
            created.add(rw.ids[(oid, key)])
    for nid, node in out.items():
        if nid in created or not isinstance(node, dict):
            continue
        for name, value in list(node.get("inputs", {}).items()):
            if not _is_api_link(value):
                continue
            mapped = rw.outputs.get((str(value[0]), int(value[1])))
            if isinstance(mapped, str):
                del node["inputs"][name]
                rw.plans[str(value[0])].notes.append(f"link to node {nid} input '{name}' dropped ({mapped})")
            elif mapped is not None:
                node["inputs"][name] = [str(mapped[0]), mapped[1]]
                _note_new_type(rw, str(value[0]), nid, node.get("class_type"), name, mapped[2])
    return out, rw.entries({i: o.type for i, o in olds.items()})


def _is_api_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _note_new_type(rw: _Rewrite, src: Any, dst: Any, dst_type: Any, name: str, new_type: str) -> None:
    """An unconverted node now gets one of this pack's socket types, which old-pack or other nodes cannot take."""
    if new_type in ("IPA_ADAPTER", "IPA_EMBEDS") and dst_type != "Reroute":
        rw.plans[src].notes.append(f"node {dst} ({dst_type}) input '{name}' now gets {new_type}, which it cannot use")


# ---------------------------------------------------------------------------------------------- UI format

def _migrate_ui(wf: dict, available: set[str]) -> tuple[dict, list[Entry]]:
    if wf["links"] and not isinstance(wf["links"][0], list):
        raise ValueError("links stored as objects (workflow schema 1) are not supported; save the workflow again "
                         "from the editor, or export it in API format")
    nodes = {n["id"]: n for n in wf["nodes"]}
    links = {lk[0]: lk for lk in wf["links"]}
    olds = {}
    for nid, node in nodes.items():
        if node.get("type") in OLD_TYPES:
            schema = OLD_INPUTS.get(node["type"], [])
            values = _widget_values(node.get("widgets_values"), [n for n, kind in schema if kind == W])
            srcs = {}
            for inp in node.get("inputs") or []:
                lk = links.get(inp.get("link"))
                if lk is not None:
                    srcs[(inp.get("widget") or {}).get("name", inp["name"])] = Src(lk[1], lk[2])
            olds[nid] = Old(nid, node["type"], values, srcs)
    entries = _subgraph_entries(wf)
    if not olds:
        return copy.deepcopy(wf), entries
    out = copy.deepcopy(wf)
    nodes = {n["id"]: n for n in out["nodes"]}
    node_ids = iter(range(max([_int(wf.get("last_node_id"))] + [_int(i) for i in nodes]) + 1, 10 ** 9))
    link_ids = iter(range(max([_int(wf.get("last_link_id"))] + [_int(i) for i in links]) + 1, 10 ** 9))
    consumers: dict[tuple[Any, int], list[Any]] = {}
    for lk in wf["links"]:
        consumers.setdefault((lk[1], lk[2]), []).append(lk[3])
    rw = _Rewrite(olds, available, lambda: next(node_ids), consumers)
    converted = rw.converted()

    def origin(src: Src) -> Src:
        """Follow Reroutes back to the node that produces the value."""
        seen = set()
        while nodes.get(src.node, {}).get("type") == "Reroute" and src.node not in seen:
            seen.add(src.node)
            lk = links.get(((nodes[src.node].get("inputs") or [{}])[0]).get("link"))
            if lk is None:
                break
            src = Src(lk[1], lk[2])
        return src

    # 1. links into converted nodes are rebuilt; links out of them are re-pointed (or dropped)
    new_links = []
    for lk in out["links"]:
        if lk[3] in converted:
            continue
        if lk[1] in converted:
            mapped = rw.outputs.get((lk[1], lk[2]))
            if not isinstance(mapped, tuple):
                rw.plans[lk[1]].notes.append(f"link to node {lk[3]} dropped ({mapped or 'no such output'})")
                _set_input_link(nodes.get(lk[3]), lk[4], None)
                continue
            _note_new_type(rw, lk[1], lk[3], nodes.get(lk[3], {}).get("type"),
                           _input_name(nodes.get(lk[3]), lk[4]), mapped[2])
            lk = [lk[0], mapped[0], mapped[1], lk[3], lk[4], mapped[2]]
        new_links.append(lk)
    # 2. the new nodes
    for oid, plan in converted.items():
        old_node = nodes.pop(oid)
        reuse: dict[tuple[Any, int], list[int]] = {}  # keep the ids of links that still join the same output
        for inp in old_node.get("inputs") or []:
            lk = links.get(inp.get("link"))
            if lk is not None:
                reuse.setdefault((lk[1], lk[2]), []).append(lk[0])
        for n, (key, (ntype, inputs)) in enumerate(sorted(plan.nodes.items(), key=lambda kv: kv[0] != "main")):
            nid = rw.ids[(oid, key)]
            node = _ui_node(old_node, nid, ntype, n)
            target = TARGETS[ntype]
            for name, kind in target.inputs:
                value = inputs.get(name)
                src = rw.source(oid, value, origin) if isinstance(value, (Src, New, ClipOf)) else None
                if kind == W and src is None:
                    continue
                link_id = None
                if src is not None:
                    old_ids = reuse.get((src[0], src[1]))
                    link_id = old_ids.pop(0) if old_ids else next(link_ids)
                    ltype = src[2] or _link_type(wf["links"], src[0], src[1]) or kind
                    new_links.append([link_id, src[0], src[1], nid, len(node["inputs"]), ltype])
                entry = {"name": name, "type": kind if kind != W else new_links[-1][5], "link": link_id}
                if kind == W:
                    entry["widget"] = {"name": name}
                node["inputs"].append(entry)
            node["widgets_values"] = []
            for name in target.widgets():
                node["widgets_values"].append(_widget_value(target, name, inputs, olds[oid]))
                if (ntype, name) in SEED_WIDGETS:
                    node["widgets_values"].append("fixed")
            nodes[nid] = node
    # 3. output link lists, reroute types, counters
    out["links"] = new_links
    _refresh_outputs(nodes.values(), new_links)
    _propagate_reroutes(nodes, new_links)
    order = [n["id"] for n in wf["nodes"]]
    out["nodes"] = [nodes[i] for i in order if i in nodes] + [n for i, n in nodes.items() if i not in set(order)]
    for key, value in (("last_node_id", max(nodes)), ("last_link_id", max([lk[0] for lk in new_links] + [0]))):
        if key in out:
            out[key] = max(_int(out[key]), value)
    return out, rw.entries({i: o.type for i, o in olds.items()}) + entries


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _ui_node(old: dict, nid: Any, ntype: str, n: int) -> dict:
    """The node dict of a replacement (keeps position, size, mode, colours, title) or of a helper placed left of it."""
    target = TARGETS[ntype]
    node = {k: copy.deepcopy(v) for k, v in old.items() if k not in ("inputs", "outputs", "widgets_values")}
    if n:
        x, y = (old.get("pos") or [0, 0])[:2]
        node.update(pos=[x - 360 * n, y + 60], size=[320, 130])
        node.pop("title", None)
    node.update(id=nid, type=ntype, inputs=[],
                outputs=[{"name": name, "type": t, "links": [], "slot_index": i}
                         for i, (name, t) in enumerate(target.outputs)])
    node.setdefault("properties", {})["Node name for S&R"] = ntype
    return node


def _input_name(node: dict | None, slot: int) -> str:
    try:
        return node["inputs"][slot]["name"]
    except (TypeError, KeyError, IndexError):
        return f"#{slot}"


def _set_input_link(node: dict | None, slot: int, link: Any) -> None:
    if node is not None and slot < len(node.get("inputs") or []):
        node["inputs"][slot]["link"] = link


def _link_type(links: list, src: Any, slot: int) -> str | None:
    return next((lk[5] for lk in links if lk[1] == src and lk[2] == slot), None)


def _refresh_outputs(nodes: Any, links: list) -> None:
    by_src: dict[tuple[Any, int], list] = {}
    for lk in links:
        by_src.setdefault((lk[1], lk[2]), []).append(lk[0])
    for node in nodes:
        for i, output in enumerate(node.get("outputs") or []):
            have = output.get("links") or []
            want = by_src.get((node["id"], i), [])
            if sorted(have) != sorted(want):
                output["links"] = want


def _propagate_reroutes(nodes: dict, links: list) -> None:
    """A Reroute passes the type of what feeds it: update its output and the links leaving it."""
    by_id = {lk[0]: lk for lk in links}
    for _ in range(len(nodes)):
        changed = False
        for node in nodes.values():
            if node.get("type") != "Reroute" or not node.get("inputs") or not node.get("outputs"):
                continue
            lk = by_id.get(node["inputs"][0].get("link"))
            if lk is None or node["outputs"][0].get("type") == lk[5]:
                continue
            node["outputs"][0]["type"] = lk[5]
            for out_id in node["outputs"][0].get("links") or []:
                if out_id in by_id:
                    by_id[out_id][5] = lk[5]
            changed = True
        if not changed:
            return


def _subgraph_entries(wf: dict) -> list[Entry]:
    out = []
    for sub in (wf.get("definitions") or {}).get("subgraphs") or []:
        for node in sub.get("nodes") or []:
            if node.get("type") in OLD_TYPES:
                out.append(Entry(node.get("id"), node["type"], "unmapped", None,
                                 [f"inside subgraph {sub.get('name') or sub.get('id')}: not converted"]))
    return out


# ---------------------------------------------------------------------------------------------- entry points

def migrate(workflow: dict, *, available: set[str] | None = None) -> tuple[dict, list[Entry]]:
    """(converted copy of ``workflow``, one report entry per old-pack node). UI or API format; the input is not
    changed. ``available``: this pack's node IDs (default: read from nodes/__init__.py)."""
    available = available_nodes() if available is None else set(available)
    if isinstance(workflow.get("nodes"), list) and "links" in workflow:
        return _migrate_ui(workflow, available)
    return _migrate_api(workflow, available)


def report_text(entries: list[Entry]) -> str:
    if not entries:
        return "no ComfyUI_IPAdapter_plus nodes found: nothing to convert"
    counts = {s: sum(e.status == s for e in entries) for s in ("converted", "approximate", "unmapped")}
    head = ", ".join(f"{n} {s}" for s, n in counts.items())
    return head + "\n" + "\n".join(e.line() for e in entries)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Convert a ComfyUI_IPAdapter_plus workflow (UI or API format) to this "
                                             "pack's nodes; prints what it could not map.")
    ap.add_argument("workflow")
    ap.add_argument("-o", "--output", help="write the converted workflow here (default: stdout)")
    ap.add_argument("--strict", action="store_true", help="exit with status 2 when some node could not be mapped")
    args = ap.parse_args(argv)
    with open(args.workflow) as f:
        workflow = json.load(f)
    new, entries = migrate(workflow)
    text = json.dumps(new, indent=1)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    print(report_text(entries), file=sys.stderr)
    return 2 if args.strict and any(e.status == "unmapped" for e in entries) else 0


if __name__ == "__main__":
    sys.exit(main())
