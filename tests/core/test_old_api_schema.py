"""The served ComfyUI_IPAdapter_plus definitions (nodes/old_api/schema.py, pure data) against the table the tests keep
(tests/host/old_pack_api.json, typed in from the old pack's source), and every old value mapped onto this pack's."""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from ip_adapter_core.attention import EMBEDS_SCALINGS
from ip_adapter_core.combine import COMBINE_METHODS
from ip_adapter_core.weighting import WEIGHT_TYPES
from testkit.old_api_table import load_table, served_ids
from migration.schemas import OLD_INPUTS, SIMPLE_WEIGHT_TYPES, UNIFIED_PRESETS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TABLE = load_table()
SERVED = served_ids(TABLE)


def _schema():
    spec = importlib.util.spec_from_file_location("old_api_schema", os.path.join(REPO, "nodes", "old_api", "schema.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up
    spec.loader.exec_module(module)
    return module


schema = _schema()


def test_the_schema_serves_exactly_the_table():
    assert list(schema.OLD_NODES) == SERVED


@pytest.mark.parametrize("node_id", SERVED)
def test_definition_equals_the_old_pack_table(node_id):
    old, want = schema.OLD_NODES[node_id], TABLE[node_id]
    assert (old.display, old.category) == (want["display_name"], want["category"])
    assert list(old.return_types) == want["output"]
    assert list(old.return_names or old.return_types) == want["output_name"]
    files = {schema.IPADAPTER_FILES: "<files in the ipadapter folders>",
             schema.FACE_MODEL_NAMES: ["buffalo_l", "antelopev2"]}
    for section in ("required", "optional"):
        got = old.inputs.get(section, {})
        assert [e[0] for e in want[section]] == list(got), (node_id, section)
        for name, kind, *options in want[section]:
            spec = got[name]
            kind_here = files.get(spec[0], spec[0]) if isinstance(spec[0], str) else spec[0]
            assert kind_here == kind, (node_id, name)
            assert (spec[1] if len(spec) > 1 else {}) == (options[0] if options else {}), (node_id, name)


def test_old_inputs_are_the_migrations_old_inputs():
    """The migration's record of the old pack's inputs (names, order) says the same, for every served node the
    migration converts."""
    for node_id in (n for n in SERVED if n in OLD_INPUTS):
        names = [e[0] for s in ("required", "optional") for e in TABLE[node_id][s]]
        assert sorted(names) == sorted(n for n, _ in OLD_INPUTS[node_id]), node_id


def test_every_old_value_has_a_counterpart():
    assert set(schema.WEIGHT_TYPES) <= set(WEIGHT_TYPES)
    assert set(schema.EMBEDS_SCALING) <= set(EMBEDS_SCALINGS)
    assert set(schema.COMBINE_EMBEDS) <= set(schema.COMBINE_METHODS) <= set(COMBINE_METHODS)
    assert set(schema.SIMPLE_WEIGHT_TYPES) == set(SIMPLE_WEIGHT_TYPES)
    assert set(schema.UNIFIED_PRESETS) <= set(UNIFIED_PRESETS)


def test_file_lists_are_resolved_when_asked():
    got = schema.input_types("IPAdapterInsightFaceLoader", {schema.FACE_MODEL_NAMES: lambda: ["buffalo_l", "x"]})
    assert got["required"]["model_name"] == (["buffalo_l", "x"],)
    got = schema.input_types("IPAdapterModelLoader", {schema.IPADAPTER_FILES: lambda: ("a.safetensors",)})
    assert got == {"required": {"ipadapter_file": (["a.safetensors"],)}}
    first, second = (schema.input_types("IPAdapter", {}) for _ in range(2))
    first["required"]["weight_type"][0].append("x")  # each call gives fresh lists
    assert second["required"]["weight_type"][0] == schema.SIMPLE_WEIGHT_TYPES == TABLE["IPAdapter"]["required"][-1][1]
