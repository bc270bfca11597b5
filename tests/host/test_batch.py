"""Batches and animation on a real ComfyUI (issue #4 item 7), zero-weight sites and the compatibility mode, on
IPA Apply (advanced): unfold_batch, frame_weights, compatibility, AnimateDiff context windows (ad_params).

Expectations are independent runs: an unfolded latent i must equal a batch-1 run with image i alone and the same
noise row, within 0.3% of the image term's own size there (the UNet runs a batch of 2 vs 1, and CPU kernels sum in
another order per batch size, so a fixed atol holds on one machine only); a frame with factor 0 must be bit-identical to the model
without the adapter; a context window must equal batch-1 runs of the window's frames. AnimateDiff-Evolved passes its
``ad_params`` dict (sub_idxs, full_length, context_length) in transformer_options, which ComfyUI copies into every
attention patch's extra_options; these tests put it in model_options["transformer_options"] the same way.
"""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch

SIZE = 8
# A latent from a bigger batch may differ from its batch-1 run by this fraction of the image term's size there
# (max |patched - unpatched| of the batch-1 run). Seen on two x86 CPUs: 1e-4..6e-4 of terms of 0.15..0.8 (the
# latents reach ~230, so float rounding alone is ~1e-5 absolute); the wrong image of the pair gives 1.7e-2.
EFFECT_FRACTION = 3e-3

from bench import bench_step, measure  # the benchmark's counting tools; neither imports a ComfyUI module
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def images(make_image):
    """Four clearly different reference images, one batch: black, white, red, random pixels."""
    solid = torch.zeros(3, 40, 36, 3)
    solid[1] = 1.0
    solid[2, ..., 0] = 1.0
    return torch.cat([solid, make_image(seed=0)])


@pytest.fixture(scope="module")
def embeds4(run_node, base_adapter, cv, images):
    return run_node("IPA_Encode", ipadapter=base_adapter, clip_vision=cv, image=images)[0]


def only(embeds, *rows):
    """The same embeds restricted to the given images (no new encode, so the tokens are exactly the same)."""
    return dataclasses.replace(embeds, cond=embeds.cond[list(rows)])


@pytest.fixture(scope="module")
def advanced(run_node, base_adapter):
    def run(model, embeds, **kw):
        settings = dict(weight=1.0, weight_type="linear", start_at=0.0, end_at=1.0, embeds_scaling="V only")
        settings.update(kw)
        return run_node("IPA_ApplyAdvanced", model=model, ipadapter=base_adapter, embeds=embeds, **settings)[0]

    return run


@pytest.fixture(scope="module")
def noise():
    import comfy.sample

    return comfy.sample.prepare_noise(torch.zeros(4, 4, SIZE, SIZE), 42)


@pytest.fixture(scope="module")
def run(sample, noise):
    """run(model, batch) -> latents of a ``batch``-latent run with noise rows 0..batch-1; run(model, rows=[i]) uses
    the given noise rows (so a batch-1 run can reproduce latent i of a bigger batch)."""

    def go(model, batch: int = 1, rows=None):
        rows = list(range(batch)) if rows is None else list(rows)
        return sample(model, latent=torch.zeros(len(rows), 4, SIZE, SIZE), noise=noise[rows])

    return go


@pytest.fixture(scope="module")
def same_as(run, sd15):
    """same_as(got, want, rows): ``got`` (rows of a bigger batch) equals ``want`` (batch-1 runs of those noise rows)
    within EFFECT_FRACTION of the image term's size in ``want``; the term must be there (> 1e-3) for this to mean
    anything."""

    def check(got, want, rows):
        effect = (want - run(sd15, rows=rows)).abs().max().item()
        assert effect > 1e-3, f"the image term is too small ({effect:.2e}) to compare against"
        err = (got - want).abs().max().item()
        assert err <= EFFECT_FRACTION * effect, (
            f"max |got - want| = {err:.3e} exceeds {EFFECT_FRACTION:g} x the image term's size {effect:.3e}")

    return check


def with_window(model, sub_idxs, full_length):
    """A clone whose transformer_options carry AnimateDiff-Evolved's ad_params for one context window."""
    m = model.clone()
    m.model_options.setdefault("transformer_options", {})["ad_params"] = {
        "sub_idxs": list(sub_idxs), "full_length": full_length, "context_length": len(sub_idxs)}
    return m


# ------------------------------------------------------------------------------------------- unfold

def test_unfold_pairs_image_i_with_latent_i(sd15, advanced, embeds4, run, same_as):
    two = only(embeds4, 0, 1)
    out = run(advanced(sd15, two, unfold_batch=True, weight=2.0), batch=2)
    alone0 = run(advanced(sd15, only(embeds4, 0), weight=2.0), rows=[0])
    alone1 = run(advanced(sd15, only(embeds4, 1), weight=2.0), rows=[1])
    same_as(out[0:1], alone0, [0])
    same_as(out[1:2], alone1, [1])
    # the check tells the images apart: latent 0 is not what image 1 alone gives on that noise row
    with pytest.raises(AssertionError, match="exceeds"):
        same_as(out[0:1], run(advanced(sd15, only(embeds4, 1), weight=2.0), rows=[0]), [0])
    # unfold off: both images on both latents, which is neither single-image run
    both = run(advanced(sd15, two, weight=2.0), batch=2)
    assert (both[0:1] - alone0).abs().max() > 1e-3 and (both[1:2] - alone1).abs().max() > 1e-3


def test_unfold_repeats_the_last_image_and_ignores_extra_images(sd15, advanced, embeds4, run, same_as):
    """2 images on 3 latents: latent 2 uses image 1. 4 images on 2 latents: images 2, 3 are not used."""
    out = run(advanced(sd15, only(embeds4, 0, 1), unfold_batch=True), batch=3)
    same_as(out[2:3], run(advanced(sd15, only(embeds4, 1)), rows=[2]), [2])
    four = run(advanced(sd15, embeds4, unfold_batch=True), batch=2)
    # same batch layout on both sides: equal up to float noise on the latents (~230 here)
    torch.testing.assert_close(four, run(advanced(sd15, only(embeds4, 0, 1), unfold_batch=True), batch=2),
                               atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------- frame weights

@pytest.mark.parametrize("unfold", [False, True])
@pytest.mark.parametrize("scaling", ["V only", "K+mean(V) w/ C penalty"])
def test_frame_weight_zero_leaves_that_frame_unpatched(sd15, advanced, embeds4, run, unfold, scaling):
    patched = advanced(sd15, only(embeds4, 0, 1), unfold_batch=unfold, frame_weights="1, 0", embeds_scaling=scaling)
    out, plain = run(patched, batch=2), run(sd15, batch=2)
    assert torch.equal(out[1], plain[1]), "a frame with factor 0 must be exactly the unpatched model's"
    assert (out[0] - plain[0]).abs().max() > 1e-3


def test_frame_weights_scale_the_weight_per_frame(sd15, advanced, embeds4, run, same_as):
    """Frame i with factor f_i equals a batch-1 run with weight * f_i; the last factor repeats for later frames."""
    e = only(embeds4, 0)
    out = run(advanced(sd15, e, weight=0.8, frame_weights="1\n0.5"), batch=3)
    for i, w in enumerate((0.8, 0.4, 0.4)):
        same_as(out[i:i + 1], run(advanced(sd15, e, weight=w), rows=[i]), [i])


def test_frame_weights_all_zero_install_nothing(sd15, advanced, embeds4, attn2_patches):
    patched = advanced(sd15, embeds4, frame_weights="0, 0")
    assert not patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2")


def test_bad_frame_weights_stop_the_node_before_encoding(sd15, run_node, base_adapter, pack_module):
    errors = pack_module("ip_adapter_core.errors")
    with pytest.raises(errors.InputError, match=r"^IPA Apply \(advanced\): input 'frame_weights'.*'half'"):
        # clip_vision None: an encode would fail differently, so the text is checked first
        run_node("IPA_ApplyAdvanced", model=sd15, ipadapter=base_adapter, weight=1.0, weight_type="linear",
                 start_at=0.0, end_at=1.0, embeds_scaling="V only", image=torch.rand(1, 32, 32, 3),
                 frame_weights="1, half")


# ------------------------------------------------------------------------------------------- AnimateDiff windows

def test_context_window_picks_the_frames_sub_idxs(sd15, advanced, embeds4, run, same_as):
    """A 4-frame video, window = frames 1 and 3: latent j of the window uses image sub_idxs[j]."""
    out = run(with_window(advanced(sd15, embeds4, unfold_batch=True), [1, 3], 4), batch=2)
    same_as(out[0:1], run(advanced(sd15, only(embeds4, 1)), rows=[0]), [0])
    same_as(out[1:2], run(advanced(sd15, only(embeds4, 3)), rows=[1]), [1])


def test_context_window_picks_frame_weights(sd15, advanced, embeds4, run):
    """frame_weights '1, 1, 0, 1', window [2, 0]: latent 0 is frame 2 (factor 0, unpatched), latent 1 frame 0."""
    patched = with_window(advanced(sd15, only(embeds4, 0), frame_weights="1, 1, 0, 1"), [2, 0], 4)
    out, plain = run(patched, batch=2), run(sd15, batch=2)
    assert torch.equal(out[0], plain[0])
    assert (out[1] - plain[1]).abs().max() > 1e-3


def test_windows_without_sub_idxs_are_plain_batches(sd15, advanced, embeds4, run):
    """ADE without context windows sends sub_idxs None: latent i is frame i."""
    patched = advanced(sd15, only(embeds4, 0, 1), unfold_batch=True)
    m = patched.clone()
    m.model_options["transformer_options"]["ad_params"] = {"sub_idxs": None, "full_length": 2}
    assert torch.equal(run(m, batch=2), run(patched, batch=2))


def test_mask_batch_as_long_as_the_video_follows_the_window(sd15, advanced, embeds4, call_site):
    """Masks for a 3-frame video: frames 0, 1 full, frame 2 zero. A window holding frame 2 gets no term; frame 1
    gets the term; without a window the 3-mask batch does not match the batch (1 latent) and mask 0 (full) is used."""
    masks = torch.ones(3, SIZE, SIZE)
    masks[2] = 0
    patched = advanced(sd15, only(embeds4, 0), attn_mask=masks)
    key = ("input", 1, 0)
    out, plain = call_site(patched, key, ad_params={"sub_idxs": [2], "full_length": 3})
    assert torch.equal(out, plain)
    out, plain = call_site(patched, key, ad_params={"sub_idxs": [1], "full_length": 3})
    assert (out - plain).abs().max() > 1e-4
    out, plain = call_site(patched, key)
    assert (out - plain).abs().max() > 1e-4


def test_unfold_window_in_a_direct_call_equals_the_single_image(sd15, advanced, embeds4, call_site):
    """The attn2 patch itself: window [3] of an unfolded 4-image apply gives image 3's term."""
    key = ("output", 2, 0)
    windowed, _ = call_site(advanced(sd15, embeds4, unfold_batch=True), key, tokens=16,
                            ad_params={"sub_idxs": [3], "full_length": 4})
    alone, _ = call_site(advanced(sd15, only(embeds4, 3)), key, tokens=16)
    torch.testing.assert_close(windowed, alone, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------- zero-weight sites

def test_style_transfer_patches_only_the_style_sites(sd15, advanced, embeds4, host, attn2_patches, pack_module, run):
    """Tiny SD1.5 (7 SpatialTransformers, t = 0 input 1, 1 input 3, 2 middle, 3-6 output 0-3); the SD1.5 style
    table has t 0-3 and 9-15, so input 1, input 3, middle 0 and output 0 are patched, output 1-3 are not. Each term
    still reads its own checkpoint layer, and the output equals the same run installed on every site."""
    e = only(embeds4, 0)
    patched = advanced(sd15, e, weight_type="style transfer")
    patches = attn2_patches(patched)
    assert set(patches) == {("input", 1, 0), ("input", 3, 0), ("middle", 0, 0), ("output", 0, 0)}
    keys = [s.key for s in host.model_sites(sd15)]
    for key, patch in patches.items():
        assert [site for _, site in patch.terms] == [keys.index(key)], key
    the_run = patches[("input", 1, 0)].terms[0][0]
    unskipped = sd15.clone()
    pack_module("nodes.patch.attn2").install(unskipped, the_run, list(enumerate(keys)))
    assert len(attn2_patches(unskipped)) == len(keys)
    assert torch.equal(run(patched), run(unskipped))


def test_weight_zero_installs_nothing_and_changes_nothing(sd15, advanced, embeds4, run):
    patched = advanced(sd15, only(embeds4, 0), weight=0.0)
    assert not patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2")
    assert torch.equal(run(patched), run(sd15))


# ------------------------------------------------------------------------------------------- compatibility

@pytest.fixture(scope="module")
def plus_adapter(make_adapter_file, sd15, cv, host, tmp_path_factory):
    return host.load_adapter(make_adapter_file(tmp_path_factory.mktemp("plus_batch"), "plus", sd15, cv, seed=0))


def test_compatibility_skips_the_middle_block(sd15, advanced, embeds4, attn2_patches, host, run):
    e = only(embeds4, 0)
    compat = advanced(sd15, e, compatibility="ComfyUI_IPAdapter_plus")
    keys = [s.key for s in host.model_sites(sd15)]
    assert set(attn2_patches(compat)) == set(keys) - {("middle", 0, 0)}
    # the same as 'this pack' with every site but the middle one at the weight
    others = ", ".join(f"{k[0]}.{k[1]}.{k[2]}:1" for k in keys if k[0] != "middle")
    assert torch.equal(run(compat), run(advanced(sd15, e, layer_weights=others)))


def test_compatibility_encodes_with_the_black_image_uncond(sd15, run_node, plus_adapter, cv, make_image,
                                                           attn2_patches):
    image = make_image(0)
    settings = dict(model=sd15, ipadapter=plus_adapter, weight=1.0, weight_type="linear", start_at=0.0, end_at=1.0,
                    embeds_scaling="V only")
    black = run_node("IPA_Encode", ipadapter=plus_adapter, clip_vision=cv, image=image, uncond="black image")[0]
    reference = run_node("IPA_Encode", ipadapter=plus_adapter, clip_vision=cv, image=image)[0]
    assert not torch.equal(black.uncond, reference.uncond), "the test needs an adapter where the two differ"

    def uncond_of(model):
        return next(iter(attn2_patches(model).values())).terms[0][0].uncond

    compat = run_node("IPA_ApplyAdvanced", **settings, image=image, clip_vision=cv,
                      compatibility="ComfyUI_IPAdapter_plus")[0]
    assert torch.equal(uncond_of(compat), black.uncond)
    own = run_node("IPA_ApplyAdvanced", **settings, image=image, clip_vision=cv)[0]
    assert torch.equal(uncond_of(own), reference.uncond)
    # connected embeds keep the uncond they were made with
    from_embeds = run_node("IPA_ApplyAdvanced", **settings, embeds=reference,
                           compatibility="ComfyUI_IPAdapter_plus")[0]
    assert torch.equal(uncond_of(from_embeds), reference.uncond)


def test_unknown_compatibility_is_refused(sd15, advanced, embeds4, pack_module):
    errors = pack_module("ip_adapter_core.errors")
    with pytest.raises(errors.InputError, match=r"^IPA Apply \(advanced\): input 'compatibility'.*'IPAdapter_plus'"):
        advanced(sd15, only(embeds4, 0), compatibility="IPAdapter_plus")


# ------------------------------------------------------------------------------------------- public API, help page

def test_inputs_are_appended_optional_with_their_defaults(comfy_nodes):
    spec = comfy_nodes.NODE_CLASS_MAPPINGS["IPA_ApplyAdvanced"].INPUT_TYPES()
    optional = list(spec["optional"])
    assert optional[optional.index("schedule_values") + 1:][:3] == ["unfold_batch", "frame_weights", "compatibility"]
    unfold, frames, compat = (spec["optional"][n] for n in ("unfold_batch", "frame_weights", "compatibility"))
    assert unfold[0] == "BOOLEAN" and unfold[1]["default"] is False and unfold[1]["tooltip"]
    assert frames[0] == "STRING" and frames[1]["default"] == "" and frames[1]["tooltip"]
    assert compat[0] == ["this pack", "ComfyUI_IPAdapter_plus"] and compat[1]["default"] == "this pack"
    assert compat[1]["tooltip"]


def test_help_page_documents_the_inputs_and_animatediff():
    text = open(os.path.join(REPO, "web", "docs", "IPA_ApplyAdvanced.md"), encoding="utf-8").read()
    for name in ("**unfold_batch**", "**frame_weights**", "**compatibility**", "ComfyUI_IPAdapter_plus",
                 "sub_idxs", "full_length", "AnimateDiff"):
        assert name in text, name


# ------------------------------------------------------------------------------------------- cost

@pytest.fixture(scope="module")
def profile(sample):
    def go(model, *, steps: int = 2, batch: int = 2):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return measure.probe_sampling(lambda m: sample(m, steps=steps, size=SIZE, batch=batch), model,
                                          measure.StepProbe())
        finally:
            torch.set_num_threads(threads)

    return go


@pytest.mark.parametrize("window", [False, True])
def test_unfold_and_frame_weights_cost_the_same_ops_per_step(sd15, advanced, embeds4, profile, window):
    """Warm step of a batch-2 run: unfold + frame_weights (in an AnimateDiff window or not) dispatch exactly the
    aten ops of a plain apply; no step of a 3-step run adds a host sync."""
    plain = advanced(sd15, only(embeds4, 0))
    per_frame = advanced(sd15, embeds4, unfold_batch=True, frame_weights="1, 0.5, 0.25, 1")
    if window:
        plain, per_frame = with_window(plain, [3, 1], 4), with_window(per_frame, [3, 1], 4)
    base, patched = profile(plain, steps=3), profile(per_frame, steps=3)
    assert patched[1].ops == base[1].ops, bench_step.fmt_counter(bench_step.diff(patched[1].ops, base[1].ops), 20)
    for step, (p, b) in enumerate(zip(patched, base)):
        syncs = bench_step.diff(p.syncs, b.syncs)
        assert not syncs, f"step {step}: syncs added {dict(syncs)}"
