"""GET /ipa/site_weights (nodes/web_api.py), the data behind the graph editor's weight preview on IPA Apply (advanced).

Expected values are worked out by hand from the published layouts and the incumbent's tables: SD1.5 has 16 sites, one
per SpatialTransformer (input 1, 2, 4, 5, 7, 8 = t_idx 0-5, middle = 6, output 3-11 = 7-15); SDXL has 70 sites in 11
SpatialTransformers (input 4, 5 with 2 blocks = t_idx 0, 1; input 7, 8 with 10 = 2, 3; middle 10 = 4; output 0-2 with
10 = 5-7; output 3-5 with 2 = 8-10). Checkpoint layer N counts input, output, then middle sites: 1, 3, 5, ...
"""
from __future__ import annotations

import asyncio
import json
import os
import urllib.parse

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SD15_EXECUTION_KEYS = (["input.1.0", "input.2.0", "input.4.0", "input.5.0", "input.7.0", "input.8.0", "middle.0.0"]
                       + [f"output.{i}.0" for i in range(3, 12)])


@pytest.fixture(scope="module")
def web_api(pack_module):
    return pack_module("nodes.web_api")


def _get(web_api, **query) -> tuple[int, dict]:
    """Run the real aiohttp handler on a request for ``query`` (URL-encoded like the browser does)."""
    from aiohttp.test_utils import make_mocked_request

    url = web_api.ROUTE + "?" + urllib.parse.urlencode({k: str(v) for k, v in query.items()})
    response = asyncio.run(web_api.handle_site_weights(make_mocked_request("GET", url)))
    return response.status, json.loads(response.body)


def _weights(answer: dict) -> dict[str, float]:
    return {s["key"]: s["weight"] for s in answer["sites"]}


def test_linear_sd15_is_the_weight_on_every_site_in_execution_order(web_api):
    status, answer = _get(web_api, family="sd15", weight_type="linear", weight=0.7)
    assert status == 200, answer
    assert [s["key"] for s in answer["sites"]] == SD15_EXECUTION_KEYS
    assert all(s["weight"] == pytest.approx(0.7) for s in answer["sites"])
    assert [s["t_idx"] for s in answer["sites"]] == list(range(16))
    layers = {s["key"]: s["layer"] for s in answer["sites"]}
    assert layers["input.1.0"] == 1 and layers["output.3.0"] == 13 and layers["output.11.0"] == 29
    assert layers["middle.0.0"] == 31
    assert answer["schedule"] == [1.0] * 21  # constant schedule, default 21 points


def test_defaults_are_the_nodes_defaults(web_api):
    status, answer = _get(web_api)
    assert status == 200 and answer["family"] == "sd15" and answer["weight_type"] == "linear"
    assert set(_weights(answer).values()) == {1.0}


def test_sdxl_style_transfer_is_output_block_1_only(web_api):
    status, answer = _get(web_api, family="sdxl", weight_type="style transfer", weight=0.8)
    assert status == 200, answer
    weights = _weights(answer)
    assert len(weights) == 70
    on = {k for k, w in weights.items() if w != 0}
    assert on == {f"output.1.{t}" for t in range(10)}
    assert all(weights[k] == pytest.approx(0.8) for k in on)
    blocks = [s["block"] for s in answer["sites"]]
    assert blocks == ["input"] * 24 + ["middle"] * 10 + ["output"] * 36  # grouped input | middle | output


def test_style_and_composition_uses_weight_composition_on_the_layout_layer(web_api):
    _, answer = _get(web_api, family="sdxl", weight_type="style and composition", weight=0.5, weight_composition=2)
    weights = _weights(answer)
    assert {k for k, w in weights.items() if w == pytest.approx(2.0)} == {f"input.8.{t}" for t in range(10)}
    assert {k for k, w in weights.items() if w == pytest.approx(0.5)} == {f"output.1.{t}" for t in range(10)}


def test_precise_type_marks_the_swapped_sites(web_api):
    _, answer = _get(web_api, family="sd15", weight_type="style transfer precise")
    swapped = {s["key"] for s in answer["sites"] if s["swapped"]}
    assert swapped == {"input.7.0", "input.8.0"}  # SD1.5 composition layers t_idx 4, 5
    _, linear = _get(web_api, family="sd15", weight_type="linear")
    assert not any(s["swapped"] for s in linear["sites"])


def test_precise_boost_scales_the_layers_the_precise_type_works_against(web_api):
    # SDXL style transfer precise: t 3 (input 8) at boost x weight, t 6 (output 1) at weight, nothing else
    _, answer = _get(web_api, family="sdxl", weight_type="style transfer precise", weight=0.5, precise_boost=3)
    weights = _weights(answer)
    assert {k for k, w in weights.items() if w == pytest.approx(1.5)} == {f"input.8.{t}" for t in range(10)}
    assert {k for k, w in weights.items() if w == pytest.approx(0.5)} == {f"output.1.{t}" for t in range(10)}
    assert sum(1 for w in weights.values() if w != 0) == 20


def test_layer_weights_replace_the_type_and_address_index_layer_and_key(web_api):
    status, answer = _get(web_api, family="sd15", weight_type="style transfer", weight=2,
                          layer_weights="3:1.0, N29:0.5\nmiddle.0.0:0.25")
    assert status == 200, answer
    weights = _weights(answer)
    assert weights["input.5.0"] == pytest.approx(2.0)     # t_idx 3
    assert weights["output.11.0"] == pytest.approx(1.0)   # N29 = checkpoint position 14 = the last output site
    assert weights["middle.0.0"] == pytest.approx(0.5)
    assert sum(1 for w in weights.values() if w != 0) == 3  # unlisted sites get 0


@pytest.mark.parametrize("kind, values, points, expected", [
    ("linear in", "", 5, [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("linear out", "", 3, [1.0, 0.5, 0.0]),
    ("ease in-out", "", 3, [0.0, 1.0, 0.0]),
    ("ease in", "", 3, [0.0, 0.5, 1.0]),       # smoothstep(0.5) = 3/4 - 2/8 = 0.5
    ("custom", "1, 0", 3, [1.0, 0.5, 0.0]),
    ("custom", "0.3", 4, [0.3] * 4),
])
def test_schedule_curve(web_api, kind, values, points, expected):
    status, answer = _get(web_api, weight_schedule=kind, schedule_values=values, points=points)
    assert status == 200, answer
    assert answer["schedule"] == pytest.approx(expected)


@pytest.mark.parametrize("query, names", [
    ({"layer_weights": "3:1.0, bogus"}, ("layer_weights", "bogus")),
    ({"layer_weights": "40:1"}, ("layer_weights", "40")),
    ({"weight_type": "sideways"}, ("weight_type", "sideways")),
    ({"weight_schedule": "custom", "schedule_values": "1, x"}, ("schedule_values", "'x'")),
    ({"weight": "abc"}, ("weight", "abc")),
    ({"family": "flux"}, ("family", "flux")),
    ({"points": "1"}, ("points",)),
])
def test_bad_values_give_the_nodes_message_instead_of_sites(web_api, query, names):
    status, answer = _get(web_api, **query)
    assert status == 200  # an ordinary editor state, not a failed request
    assert set(answer) == {"error"}
    assert all(n in answer["error"] for n in names), answer["error"]


def test_errors_match_what_the_node_raises(web_api, pack_module):
    """The preview's error text is the apply node's own message (same core function, no second parser)."""
    weighting = pack_module("ip_adapter_core.weighting")
    sites = pack_module("ip_adapter_core.sites")
    with pytest.raises(ValueError) as raised:
        weighting.parse_layer_weights("2:zz", sites.expand_layout(sites.SD15_LAYOUT))
    _, answer = _get(web_api, layer_weights="2:zz")
    assert answer["error"] == str(raised.value)


@pytest.mark.slow
def test_route_is_served_by_a_real_comfyui_server(comfyui_path):
    """The pack registers the route on ComfyUI's PromptServer: GET it over HTTP from a real server."""
    from testkit.comfy_server import ComfyServer

    with ComfyServer(comfyui_path, cpu=True, quiet=True) as server:
        r = server.session.get(server.url + "/ipa/site_weights",
                               params={"family": "sdxl", "weight_type": "composition", "weight": "1.5"}, timeout=60)
        assert r.status_code == 200, r.text
        weights = _weights(r.json())
        assert {k for k, w in weights.items() if w != 0} == {f"input.8.{t}" for t in range(10)}
        bad = server.session.get(server.url + "/ipa/site_weights", params={"layer_weights": "nope"}, timeout=60)
        assert bad.status_code == 200 and "layer_weights" in bad.json()["error"]
