"""Reliability battery ("never break a user's session"), part 1: bad inputs, through a real ComfyUI server (main.py
--cpu) with this pack, the random stand-in models and deliberately bad files (testkit/reliability.py), started once
for the module.

Every case either is rejected at validation (POST /prompt answers node_errors naming the node and the input) or fails
at execution with one of the pack's typed errors (IPAdapterError subclasses) whose message names the node and the
input -- or, for the odd-but-legal inputs (1-pixel, 1x4096, 4096x4096, RGBA, gray images, weights -1 and 5), runs.
After every case the server still serves and the good prompt gives exactly the pixels it gave before the battery.
A mask of zeros gives the unpatched pixels; saved embeds never leave their folder.

Cases that no core node can produce are skipped with the reason (empty image batch, NaN/inf pixels, 1-channel
IMAGE); they are covered at node level in tests/host/test_errors.py. Part 2 (long run, interrupt):
tests/host/test_reliability_runs.py.
"""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from testkit.reliability import (ADAPTER, ADAPTER_B, ADAPTER_PLUS, BAD_FILES, CV_NARROW, PROMPT_TIMEOUT, exec_error,
                                 graph, reset_peak, rss_mb, run_ok)

pytestmark = pytest.mark.slow

PACK_ERRORS = {"IPAdapterError", "NotAnIPAdapterError", "CorruptFileError", "UnsupportedAdapterError",
               "IncompatibleError", "InputError"}
DISPLAY = {"IPA_ModelLoader": "IPA Load Adapter", "IPA_Encode": "IPA Encode Image", "IPA_Apply": "IPA Apply",
           "IPA_ApplySimple": "IPA Apply (simple)", "IPA_SaveEmbeds": "IPA Save Embeds"}
PEAK_BOUND_MB = 1000.0   # peak RSS rise allowed during one case (4096x4096 image: ~200 MB float tensor + PNG decode)


def _embeds_graph(encode_adapter: str, apply_adapter: str) -> dict:
    g = graph()
    g["12"] = {"class_type": "IPA_ModelLoader", "inputs": {"ipadapter_file": encode_adapter}}
    g["13"] = {"class_type": "IPA_Encode", "inputs": {"ipadapter": ["12", 0], "clip_vision": ["5", 0],
                                                      "image": ["6", 0]}}
    g["4"]["inputs"]["ipadapter_file"] = apply_adapter
    g["7"] = {"class_type": "IPA_Apply", "inputs": {"model": ["1", 0], "ipadapter": ["4", 0], "embeds": ["13", 0],
                                                    "weight": 1.0, "start_at": 0.0, "end_at": 1.0}}
    return g


def _mask_graph(value: float = 0.0, batch: int = 1) -> dict:
    """IPA_Apply (embeds route) with attn_mask = SolidMask(value), repeated to ``batch`` masks via core nodes."""
    g = _embeds_graph(ADAPTER, ADAPTER)
    g["20"] = {"class_type": "SolidMask", "inputs": {"value": value, "width": 48, "height": 80}}
    mask = ["20", 0]
    if batch > 1:
        g["21"] = {"class_type": "MaskToImage", "inputs": {"mask": ["20", 0]}}
        g["22"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["21", 0], "amount": batch}}
        g["23"] = {"class_type": "ImageToMask", "inputs": {"image": ["22", 0], "channel": "red"}}
        mask = ["23", 0]
    g["7"]["inputs"]["attn_mask"] = mask
    return g


def _save_embeds_graph(prefix: str) -> dict:
    g = _embeds_graph(ADAPTER, ADAPTER)
    g["14"] = {"class_type": "IPA_SaveEmbeds", "inputs": {"embeds": ["13", 0], "filename_prefix": prefix}}
    return g


def _rgba_tensor_graph() -> dict:
    """LoadImage gives RGB + MASK; JoinImageWithAlpha makes a real 4-channel IMAGE tensor."""
    g = graph(image="noise.png")
    g["12"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["6", 0], "alpha": ["6", 1]}}
    g["7"]["inputs"]["image"] = ["12", 0]
    return g


# Words a case's error message must NOT contain (a wrong diagnosis is not a clear message).
MISDIAGNOSIS = {
    "random_bytes_bin": ("Python objects", "could run code"),
    "renamed_safetensors_as_bin": ("Python objects", "could run code"),
}
BUG: dict[str, str] = {}  # case id -> reason, for cases found to fail (strict xfail); all fixed so far

# id -> (graph factory, expectation, node class, input name)
#   expectation "invalid": rejected at validation naming node and input; "error": a typed pack error at execution
#   naming node and input; "error_or_ok": either that or success; "ok": runs.
CASES = {
    "missing_file": (lambda: graph(adapter="no_such_adapter.safetensors"), "invalid", "IPA_ModelLoader", "ipadapter_file"),
    "renamed_safetensors_as_bin": (lambda: graph(adapter=BAD_FILES["renamed_safetensors_as_bin"]), "error_or_ok",
                                   "IPA_ModelLoader", "ipadapter_file"),
    "renamed_bin_as_safetensors": (lambda: graph(adapter=BAD_FILES["renamed_bin_as_safetensors"]), "error_or_ok",
                                   "IPA_ModelLoader", "ipadapter_file"),
    "empty_file": (lambda: graph(adapter=BAD_FILES["empty"]), "error", "IPA_ModelLoader", "ipadapter_file"),
    "truncated_file": (lambda: graph(adapter=BAD_FILES["truncated"]), "error", "IPA_ModelLoader", "ipadapter_file"),
    "random_bytes": (lambda: graph(adapter=BAD_FILES["random_bytes"]), "error", "IPA_ModelLoader", "ipadapter_file"),
    "random_bytes_bin": (lambda: graph(adapter=BAD_FILES["random_bytes_bin"]), "error", "IPA_ModelLoader",
                         "ipadapter_file"),
    "lora_in_ipadapter_folder": (lambda: graph(adapter=BAD_FILES["lora"]), "error", "IPA_ModelLoader", "ipadapter_file"),
    "unet_in_ipadapter_folder": (lambda: graph(adapter=BAD_FILES["unet"]), "error", "IPA_ModelLoader", "ipadapter_file"),
    "clip_vision_in_ipadapter_folder": (lambda: graph(adapter=BAD_FILES["clip_vision"]), "error", "IPA_ModelLoader",
                                        "ipadapter_file"),
    "adapter_site_widths_mismatch": (lambda: graph(adapter=BAD_FILES["site_widths"]), "error", "IPA_ApplySimple",
                                     "model"),
    "sdxl_adapter_on_sd15_model": (lambda: graph(adapter=BAD_FILES["sdxl_context"]), "error", "IPA_ApplySimple",
                                   "model"),
    "wrong_clip_vision_width": (lambda: graph(clip_vision=CV_NARROW), "error", "IPA_ApplySimple", "clip_vision"),
    "wrong_clip_vision_width_plus": (lambda: graph(adapter=ADAPTER_PLUS, clip_vision=CV_NARROW), "error",
                                     "IPA_ApplySimple", "clip_vision"),
    "image_1_pixel": (lambda: graph(image="px1.png"), "error_or_ok", "IPA_ApplySimple", "image"),
    "image_1x4096": (lambda: graph(image="wide_1x4096.png"), "error_or_ok", "IPA_ApplySimple", "image"),
    "image_4096x1": (lambda: graph(image="tall_1x4096.png"), "error_or_ok", "IPA_ApplySimple", "image"),
    "image_4096x4096": (lambda: graph(image="big_4096.png"), "ok", "IPA_ApplySimple", "image"),
    "image_rgba_png": (lambda: graph(image="rgba.png"), "ok", "IPA_ApplySimple", "image"),
    "image_gray_png": (lambda: graph(image="gray.png"), "ok", "IPA_ApplySimple", "image"),
    "image_rgba_tensor": (_rgba_tensor_graph, "ok", "IPA_ApplySimple", "image"),
    "weight_-1": (lambda: graph(weight=-1.0), "ok", "IPA_ApplySimple", "weight"),
    "weight_5": (lambda: graph(weight=5.0), "ok", "IPA_ApplySimple", "weight"),
    "weight_5.5": (lambda: graph(weight=5.5), "invalid", "IPA_ApplySimple", "weight"),
    "weight_-1.5": (lambda: graph(weight=-1.5), "invalid", "IPA_ApplySimple", "weight"),
    "start_after_end": (lambda: graph(start_at=0.8, end_at=0.2), "error", "IPA_ApplySimple", "start_at"),
    "embeds_from_another_adapter": (lambda: _embeds_graph(ADAPTER, ADAPTER_B), "error", "IPA_Apply", "embeds"),
    "embeds_from_plus_adapter": (lambda: _embeds_graph(ADAPTER_PLUS, ADAPTER), "error", "IPA_Apply", "embeds"),
    "mask_all_zeros": (lambda: _mask_graph(0.0), "ok", "IPA_Apply", "attn_mask"),
    "mask_batch_3_for_latent_batch_1": (lambda: _mask_graph(1.0, batch=3), "ok", "IPA_Apply", "attn_mask"),
    "saved_embeds_prefix_traversal": (lambda: _save_embeds_graph("../../escape/evil"), "error", "IPA_SaveEmbeds",
                                      "filename_prefix"),
    "saved_embeds_prefix_absolute": (lambda: _save_embeds_graph("/tmp/ipa_abs_evil"), "error", "IPA_SaveEmbeds",
                                     "filename_prefix"),
    "saved_embeds_prefix_non_ascii": (lambda: _save_embeds_graph("émbeds/日本語_テスト"), "ok", "IPA_SaveEmbeds",
                                      "filename_prefix"),
}
SKIPPED = {
    "image_batch_0": "no core ComfyUI 0.3.64 node yields an empty IMAGE batch (ImageFromBatch / RepeatImageBatch / "
                     "ImageCrop clamp to >= 1 image and >= 1 pixel); covered at node level by "
                     "tests/host/test_errors.py::test_empty_image_batch",
    "image_nan_inf": "no core node turns a finite image into NaN/inf (ImageBlend modes, ImageRGBToYUV, blur and sharpen "
                     "stay finite on 0..1 inputs); prepare_images rejects non-finite pixels at node level",
    "image_1_channel_tensor": "no core node outputs a 1-channel IMAGE (LoadImage gives RGB + MASK, ImageRGBToYUV expands "
                              "Y to 3 channels); the 'L' PNG case covers gray files",
    "sd15_adapter_on_sdxl_checkpoint": "a stand-in SDXL checkpoint (CLIP-G + CLIP-L + SDXL UNet) costs too much to "
                                       "build and load in CI; covered by adapter_site_widths_mismatch and "
                                       "sdxl_adapter_on_sd15_model here and test_errors.py::test_sd15_adapter_on_sdxl_model",
}


def _params():
    out = []
    for cid in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=BUG[cid])] if cid in BUG else []
        out.append(pytest.param(cid, id=cid, marks=marks))
    for cid, why in SKIPPED.items():
        out.append(pytest.param(cid, id=cid, marks=pytest.mark.skip(reason=why)))
    return out


def _check_clear_error(run, node_id: str, node_class: str, input_name: str) -> None:
    err = exec_error(run)
    assert err, f"no execution_error message; status {run.status}: {run.error}"
    etype = err.get("exception_type", "").rsplit(".", 1)[-1]
    msg = err.get("exception_message", "")
    assert err.get("node_id") == node_id and err.get("node_type") == node_class, (
        f"the error is reported on node {err.get('node_id')} ({err.get('node_type')}), expected {node_id} "
        f"({node_class}): {etype}: {msg}")
    assert etype in PACK_ERRORS, f"not one of the pack's typed errors: {etype}: {msg}"
    assert msg.startswith(DISPLAY[node_class]), f"the message does not name the node ({DISPLAY[node_class]}): {msg}"
    assert f"'{input_name}'" in msg or f"{input_name} (" in msg, f"the message does not name input '{input_name}': {msg}"
    assert len(msg) < 1500, f"message too long ({len(msg)} chars): {msg[:300]}..."


@pytest.mark.parametrize("case", _params())
def test_bad_input_then_good_prompt(reliability_server, reliability_baseline, case):
    factory, expect, node_class, input_name = CASES[case]
    g = factory()
    node_id = next(nid for nid, n in g.items() if n["class_type"] == node_class)
    reset_peak(reliability_server.pid)
    rss0, _ = rss_mb(reliability_server.pid)
    run = reliability_server.queue(g, timeout=PROMPT_TIMEOUT)
    rss, peak = rss_mb(reliability_server.pid)
    print(f"\n[{case}] status {run.status} in {run.seconds:.1f} s; server RSS {rss:.0f} MB, peak +{peak - rss0:.0f} MB; "
          f"{(exec_error(run).get('exception_message') or run.error)[:400]}")
    assert reliability_server.proc.poll() is None, f"the server died:\n{reliability_server.log_tail()}"
    if expect == "invalid":
        assert run.status == "invalid", f"expected a validation error, got {run.status}: {run.error}"
        assert f"node {node_id} ({node_class})" in run.error and input_name in run.error, run.error
    elif expect == "ok" or (expect == "error_or_ok" and run.status == "success"):
        assert run.status == "success", f"status {run.status}: {run.error}"
        assert run.images and run.images[0].shape == (64, 64, 3)
    else:
        assert run.status == "error", f"expected an execution error, got {run.status}: {run.error}"
        _check_clear_error(run, node_id, node_class, input_name)
        msg = exec_error(run).get("exception_message", "")
        wrong = [w for w in MISDIAGNOSIS.get(case, ()) if w in msg]
        assert not wrong, f"the message misdiagnoses the file ({wrong}): {msg}"
    assert peak - rss0 < PEAK_BOUND_MB, f"peak RSS rose {peak - rss0:.0f} MB above {rss0:.0f} MB during the case"
    again = run_ok(reliability_server, graph())
    assert (again.images[0] == reliability_baseline).all(), (
        f"after case {case} the good prompt gave other pixels (max abs diff "
        f"{np.abs(again.images[0].astype(int) - reliability_baseline).max()})")


def test_weights_at_the_limits_differ(reliability_server, reliability_baseline):
    """-1 and 5 really act (not clamped to something else silently)."""
    lo = run_ok(reliability_server, graph(weight=-1.0)).images[0]
    hi = run_ok(reliability_server, graph(weight=5.0)).images[0]
    assert not (lo == reliability_baseline).all() and not (hi == reliability_baseline).all() and not (lo == hi).all()


def test_zero_mask_gives_the_unpatched_image(reliability_server, reliability_baseline):
    """A mask of zeros removes the image term everywhere: the pixels of the graph without the adapter."""
    plain = run_ok(reliability_server, graph(apply=False)).images[0]
    masked = run_ok(reliability_server, _mask_graph(0.0)).images[0]
    assert (masked == plain).all()
    assert not (reliability_baseline == plain).all(), "the adapter had no effect, the test proves nothing"


def test_saved_embeds_stay_inside_their_folder(reliability_server):
    """Non-ASCII names are saved inside output/ipadapter_embeds; traversal and absolute prefixes write nothing."""
    out = reliability_server.output_dir
    run_ok(reliability_server, _save_embeds_graph("émbeds/日本語_テスト"))
    saved = glob.glob(os.path.join(out, "ipadapter_embeds", "émbeds", "日本語_テスト_*.safetensors"))
    assert saved, os.listdir(os.path.join(out, "ipadapter_embeds"))
    reliability_server.queue(_save_embeds_graph("../../escape/evil"), timeout=PROMPT_TIMEOUT)
    reliability_server.queue(_save_embeds_graph("/tmp/ipa_abs_evil"), timeout=PROMPT_TIMEOUT)
    root = os.path.dirname(os.path.dirname(out))  # the prefix climbs two levels: look everywhere below that
    assert not glob.glob(os.path.join(root, "**", "evil_*.safetensors"), recursive=True)
    assert not glob.glob("/tmp/ipa_abs_evil*")
