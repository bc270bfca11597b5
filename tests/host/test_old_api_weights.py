"""The served ComfyUI_IPAdapter_plus weight-strategy IDs (nodes/old_api/weights.py; the rules:
ip_adapter_core.weight_strategy).

In-process: IPAdapter Weights lays out the reference images and weights, From Strategy redoes it on another batch,
the prompt schedule and Combine Weights, errors named; its weights list drives IPAdapter Batch latent by latent on
the tiny models. Through a real server on the stand-ins: IPAdapter Weights -> IPAdapter Batch (weights, image_1) on
4 latents. The oracle: with IPA_OLD_PACK=/path/to/ComfyUI_IPAdapter_plus, the old pack's own node functions (in a
child process) over a grid of inputs give what the served nodes give, floats within 1e-9.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from testkit import workflow_convert as wc
from testkit.comfyui_env import REPO

PROMPT_TIMEOUT = 600.0
MIN_WEIGHT_EFFECT = 2.0  # mean |difference| on the 0-255 scale; the stand-ins give far more at weight 1
FLOAT_TOLERANCE = 1e-9
WEIGHTS = dict(weights="1.0, 0.0", timing="linear", frames=4, start_frame=0, end_frame=9999, add_starting_frames=0,
               add_ending_frames=0, method="full batch")
LINEAR_4 = [1.0, 2 / 3, 1 / 3, 0.0]


def _indexed(n: int) -> torch.Tensor:
    """n reference images, image k filled with k (so an output frame's image can be read back)."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 2, 2, 3).clone()


def _indices(images: torch.Tensor | None) -> list[int] | None:
    return None if images is None else images[:, 0, 0, 0].round().long().tolist()


# ---------------------------------------------------------------------------------------------- in-process

def test_weights_lay_out_each_reference_image_over_its_frames(run_node, make_image):
    image = make_image(seed=4, batch=3)
    before = image.clone()
    weights, invert, total, image_1, image_2, strategy = run_node("IPAdapterWeights", **WEIGHTS, image=image)
    assert weights == pytest.approx(LINEAR_4 * 3, abs=1e-12) and all(type(w) is float for w in weights)
    assert invert == weights[::-1] and total == 12 and image_2 is None
    assert torch.equal(image_1, image.repeat_interleave(4, dim=0))
    assert strategy == {**WEIGHTS, "frame_count": 3}
    assert torch.equal(image, before), "the reference images were changed"
    shifted = run_node("IPAdapterWeights", **{**WEIGHTS, "method": "shift batches"}, image=image)
    assert torch.equal(shifted[3], image[:2].repeat_interleave(4, dim=0))
    assert torch.equal(shifted[4], image[1:].repeat_interleave(4, dim=0))


def test_without_an_image_only_the_weights(run_node):
    weights, invert, total, image_1, image_2, strategy = run_node("IPAdapterWeights", **WEIGHTS)
    assert weights == pytest.approx(LINEAR_4, abs=1e-12) and total == 4
    assert image_1 is None and image_2 is None and strategy["frame_count"] == 0


def test_from_strategy_redoes_the_weights_on_another_batch(run_node):
    settings = {**WEIGHTS, "method": "alternate batches", "add_starting_frames": 1, "timing": "ease_in_out"}
    strategy = run_node("IPAdapterWeights", **settings, image=_indexed(2))[5]
    got = run_node("IPAdapterWeightsFromStrategy", weights_strategy=strategy, image=_indexed(4))
    want = run_node("IPAdapterWeights", **settings, image=_indexed(4))
    assert got[:3] == want[:3] and _indices(got[3]) == _indices(want[3]) and _indices(got[4]) == _indices(want[4])
    assert got[5] == strategy and got[5] is not strategy


def test_prompt_schedule_follows_the_strategy(run_node):
    strategy = run_node("IPAdapterWeights", **{**WEIGHTS, "add_starting_frames": 2}, image=_indexed(3))[5]
    (text,) = run_node("IPAdapterPromptScheduleFromWeightsStrategy", weights_strategy=strategy,
                       prompt="a red car\n\na blue car")
    assert text == '"0": "a red car",\n"2": "a red car",\n"6": "a blue car",\n"10": "a blue car",\n'


def test_combine_weights_joins_a_weights_list_and_a_number(run_node):
    weights = run_node("IPAdapterWeights", **WEIGHTS)[0]
    kept = list(weights)
    joined, count = run_node("IPAdapterCombineWeights", weights_1=weights, weights_2=0.5)
    assert joined == weights + [0.5] and count == 5 and weights == kept


@pytest.mark.parametrize("node,inputs,message", [
    ("IPAdapterWeights", {**WEIGHTS, "weights": "1, x"},
     r"IPAdapter Weights: input 'weights': value 2 \('x'\) is not a number"),
    ("IPAdapterWeights", {**WEIGHTS, "start_frame": 5, "end_frame": 3},
     r"IPAdapter Weights: input 'start_frame': 5 is after the end of the transition \(3\)"),
    ("IPAdapterWeights", {**WEIGHTS, "method": "shift batches", "image": _indexed(1)},
     "IPAdapter Weights: input 'image': method 'shift batches' .* at least 2 images, got 1"),
    ("IPAdapterWeightsFromStrategy", {"weights_strategy": "linear"},
     "IPAdapter Weights From Strategy: input 'weights_strategy': expected WEIGHTS_STRATEGY .* got str"),
    ("IPAdapterPromptScheduleFromWeightsStrategy", {"weights_strategy": {**WEIGHTS, "frame_count": 2, "timing": "x"},
                                                    "prompt": "a"},
     r"Prompt Schedule From Weights Strategy: input 'weights_strategy' \(its 'timing'\): unknown timing 'x'"),
    ("IPAdapterCombineWeights", {"weights_1": "0.5", "weights_2": 0.5},
     "IPAdapter Combine Weights: input 'weights_1': expected a number or a list of numbers"),
])
def test_bad_inputs_are_named(run_node, pack_module, node, inputs, message):
    errors = pack_module("ip_adapter_core.errors")
    with pytest.raises(errors.IPAdapterError, match=message):
        run_node(node, **inputs)


def test_the_weights_list_drives_ipadapter_batch_latent_by_latent(run_node, old_plus, cv, make_image, sd15, sample):
    """weights [1, 0] with image_1 on 2 latents: latent 0 gets the adapter, latent 1 is the plain model's."""
    old, _ = old_plus
    weights, _, _, image_1, _, _ = run_node("IPAdapterWeights", **{**WEIGHTS, "frames": 2},
                                            image=make_image(seed=6))
    assert weights == [1.0, 0.0] and image_1.shape[0] == 2
    (model,) = run_node("IPAdapterBatch", model=sd15, ipadapter=old, image=image_1, weight=weights,
                        weight_type="linear", start_at=0.0, end_at=1.0, embeds_scaling="V only",
                        encode_batch_size=0, clip_vision=cv)
    got, plain = sample(model, batch=2), sample(sd15, batch=2)
    effect = float((got[0] - plain[0]).abs().max())
    assert effect > 1e-2, f"weight 1 hardly changes latent 0 ({effect:.3g})"
    assert float((got[1] - plain[1]).abs().max()) <= 1e-5 * effect, "weight 0 changed latent 1"


# ---------------------------------------------------------------------------------------------- a real server

def _weights_graph() -> dict:
    """IPAdapterUnifiedLoader; two references (the second inverted) -> IPAdapterWeights (linear, 4 frames) ->
    IPAdapterBatch (weight = weights, image = image_1) on 4 latents."""
    w = wc.Graph()
    ckpt = w.add("CheckpointLoaderSimple", ckpt_name="v1-5-pruned-emaonly.safetensors")
    pos = w.add("CLIPTextEncode", text="a photo", clip=[ckpt[0], 1])
    neg = w.add("CLIPTextEncode", text="", clip=[ckpt[0], 1])
    loader = w.add("IPAdapterUnifiedLoader", model=ckpt, preset="PLUS (high strength)", ipadapter=None)
    image = w.add("LoadImage", image="ipadapter_reference.png")
    image = w.add("ImageBatch", image1=image, image2=w.add("ImageInvert", image=image))
    weights = w.add("IPAdapterWeights", **WEIGHTS, image=image)
    model = w.add("IPAdapterBatch", model=loader, ipadapter=[loader[0], 1], image=[weights[0], 3], weight=weights,
                  weight_type="linear", start_at=0.0, end_at=1.0, embeds_scaling="V only", encode_batch_size=0,
                  image_negative=None, attn_mask=None, clip_vision=None)
    latent = w.add("EmptyLatentImage", width=64, height=64, batch_size=4)
    sampled = w.add("KSampler", model=model, seed=1, steps=3, cfg=5.0, sampler_name="euler", scheduler="normal",
                    positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    w.add("SaveImage", images=w.add("VAEDecode", samples=sampled, vae=[ckpt[0], 2]), filename_prefix="weights")
    return wc.use_standins(w.root)


@pytest.mark.slow
def test_weights_into_ipadapter_batch_through_the_server(standin_server):
    graph = _weights_graph()
    on = standin_server.queue_ok(graph, timeout=PROMPT_TIMEOUT).images
    off = standin_server.queue_ok(wc.set_inputs(graph, "IPAdapterBatch", weight=0.0), timeout=PROMPT_TIMEOUT).images
    assert len(on) == len(off) == 4
    effects = [float(np.abs(a.astype(np.float64) - b).mean()) for a, b in zip(on, off)]
    print(f"\nIPAdapterWeights -> IPAdapterBatch, mean |weights - weight 0| per latent: {np.round(effects, 3)}")
    assert effects[0] > MIN_WEIGHT_EFFECT, f"weight 1 vs 0 differ by only {effects}"
    assert effects[3] < 0.1 * effects[0], f"the last latent has weight 0, yet differs: {effects}"


# ---------------------------------------------------------------------------------------------- the oracle

ORACLE = r"""
import importlib.util, json, os, random, sys
comfyui, old = sys.argv[1:3]
sys.path.insert(0, comfyui)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import comfy.model_management, comfy.utils, folder_paths, node_helpers
import torch
spec = importlib.util.spec_from_file_location("ipa_old_pack", os.path.join(old, "__init__.py"),
                                              submodule_search_locations=[old])
package = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = package
spec.loader.exec_module(package)
plus = sys.modules["ipa_old_pack.IPAdapterPlus"]
job = json.loads(sys.stdin.read())

def images(n):
    return None if not n else torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 2, 2, 3).clone()

def indices(t):
    return None if t is None else t[:, 0, 0, 0].round().long().tolist()

def weights(node, **inputs):
    random.seed(job["seed"])
    try:
        w, inv, total, i1, i2, strategy = node().weights(**inputs)
    except Exception as e:
        return {"error": type(e).__name__}
    return {"weights": w, "invert": inv, "total": total, "image_1": indices(i1), "image_2": indices(i2),
            "strategy": strategy}

out = []
for case in job["cases"]:
    got = weights(plus.IPAdapterWeights, image=images(case["images"]), **case["inputs"])
    if "error" not in got:
        got["from"] = weights(plus.IPAdapterWeightsFromStrategy, weights_strategy=got["strategy"],
                              image=images(case["other"]))
        got["schedules"] = [plus.IPAdapterPromptScheduleFromWeightsStrategy().prompt_schedule(got["strategy"], p)[0]
                            for p in case["prompts"]]
    out.append(got)
combined = [list(plus.IPAdapterCombineWeights().combine(a, b)) for a, b in job["combine"]]
print("ORACLE-JSON:" + json.dumps({"cases": out, "combine": combined}))
"""

TEXTS = ("1.0, 0.0", "0.2,\n0.9, 0.5", "", "0.7")
PROMPTS = ("", "a cat\na dog", " one \n\n  \ntwo\nthree\nfour\nfive")
COMBINE = ([0.5, 0.25], [[1.0, 0.5], 0.0], [0.3, [0.1, 0.2]], [[0.0], [1.0, 1.0]])


def _grid() -> list[dict]:
    keys = ("weights", "timing", "frames", "start_frame", "end_frame", "add_starting_frames", "add_ending_frames",
            "method")
    values = (TEXTS, ("custom", "linear", "ease_in_out", "ease_in", "ease_out", "random"), (0, 1, 7), (0, 2, 4),
              (3, 9999), (0, 2), (0, 1), ("full batch", "shift batches", "alternate batches"))
    cases = []
    for i, (combo, images) in enumerate(itertools.product(itertools.product(*values), (0, 1, 2, 3))):
        cases.append({"inputs": dict(zip(keys, combo)), "images": images, "other": (images + 1) % 4 + 1,
                      "prompts": list(PROMPTS) if i % 5 == 0 else []})
    return cases


def _old_results(comfyui_path: str, old: str, job: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", ORACLE, comfyui_path, old], input=json.dumps(job), cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("ORACLE-JSON:")][-1]
    return json.loads(line[len("ORACLE-JSON:"):])


def _ours(run_node, errors, node: str, image: int, **inputs) -> dict:
    try:
        w, inv, total, i1, i2, strategy = run_node(node, image=_indexed(image) if image else None, **inputs)
    except errors.IPAdapterError as e:
        return {"error": "InputError", "message": str(e)}
    return {"weights": w, "invert": inv, "total": total, "image_1": _indices(i1), "image_2": _indices(i2),
            "strategy": strategy}


def _same(old: dict, ours: dict) -> float:
    """The largest weight difference; asserts everything else is equal."""
    assert (old["total"], old["image_1"], old["image_2"], old["strategy"]) == \
        (ours["total"], ours["image_1"], ours["image_2"], ours["strategy"])
    assert len(old["weights"]) == len(ours["weights"]) == len(old["invert"]) == len(ours["invert"])
    return max([abs(a - b) for a, b in zip(old["weights"] + old["invert"], ours["weights"] + ours["invert"])] or [0])


def _why_they_differ(case: dict, old: dict, ours: dict) -> str:
    """Where exactly one side refuses: the deviation this pack makes on purpose (ip_adapter_core.weight_strategy's
    docstring), else a failure."""
    x, images = case["inputs"], case["images"]
    frames = max(x["frames"], 2)
    end = min(x["end_frame"], frames)
    timed = x["timing"] != "custom"
    if "error" in old:  # the old pack failed with a Python error; here a one-frame transition is its end weight
        assert old["error"] == "ZeroDivisionError" and timed and end - x["start_frame"] == 1, (case, old, ours)
        first = x["add_starting_frames"] if images else 0
        assert ours["weights"][first + end - 1] == float(x["weights"].split(",")[-1] if x["weights"] else 1.0)
        return "one-frame transition (old: ZeroDivisionError)"
    if timed and x["start_frame"] > end:  # the old pack made more weights than frames
        assert "input 'start_frame'" in ours["message"], ours
        return "start_frame after the capped end_frame (old: a list longer than the frames)"
    assert x["method"] != "full batch" and images == 1 and "input 'image'" in ours["message"], (case, old, ours)
    return "shift / alternate with one image (old: empty outputs)"


def test_the_old_pack_gives_what_the_served_nodes_give(comfyui_path, run_node, pack_module):
    old_pack = os.environ.get("IPA_OLD_PACK")
    if not old_pack or not os.path.isfile(os.path.join(old_pack, "IPAdapterPlus.py")):
        reason = "IPA_OLD_PACK is not set to a ComfyUI_IPAdapter_plus folder: the weights oracle did not run"
        print(f"\nSKIPPED: {reason}")
        pytest.skip(reason)
    errors = pack_module("ip_adapter_core.errors")
    seed = pack_module("ip_adapter_core.weight_strategy").RANDOM_SEED
    cases = _grid()
    old = _old_results(comfyui_path, old_pack, {"seed": seed, "cases": cases, "combine": COMBINE})
    tally: dict[str, int] = {}
    worst, schedules, redone = 0.0, 0, 0
    for case, theirs in zip(cases, old["cases"]):
        ours = _ours(run_node, errors, "IPAdapterWeights", case["images"], **case["inputs"])
        if ("error" in theirs) != ("error" in ours):
            kind = _why_they_differ(case, theirs, ours)
        elif "error" in theirs:
            kind = "refused by both"
        else:
            kind = "equal"
            worst = max(worst, _same(theirs, ours))
            again = _ours(run_node, errors, "IPAdapterWeightsFromStrategy", case["other"],
                          weights_strategy=ours["strategy"])
            if ("error" in theirs["from"]) != ("error" in again):
                _why_they_differ({**case, "images": case["other"]}, theirs["from"], again)
            elif "error" not in again:
                worst = max(worst, _same(theirs["from"], again))
            redone += 1
            for prompt, text in zip(case["prompts"], theirs["schedules"]):
                got = run_node("IPAdapterPromptScheduleFromWeightsStrategy", weights_strategy=ours["strategy"],
                               prompt=prompt)
                assert got == (text,), (case, prompt)
                schedules += 1
        tally[kind] = tally.get(kind, 0) + 1
    for (a, b), want in zip(COMBINE, old["combine"]):
        assert list(run_node("IPAdapterCombineWeights", weights_1=a, weights_2=b)) == want
    print(f"\nweights oracle: {len(cases)} IPAdapterWeights cases: {tally}; {redone} From Strategy re-runs, "
          f"{schedules} prompt schedules, {len(COMBINE)} combines equal; largest weight difference {worst:.3g}")
    assert worst <= FLOAT_TOLERANCE
    assert tally.get("equal", 0) > len(cases) // 2
