"""The Flux block path (nodes/patch/blocks.py) among other patches, on the tiny Flux of testkit/tiny_flux.py with a
random XLabs adapter, in-process through the pack's nodes:

- a foreign dit patch already on a block is called through (not replaced), and an attention override set by another
  node is chained (called for every attention, the image prompt still added);
- several adapters on one block add up (two applies at w/2 = one at w), weight 0 and a range that excludes the step
  give the unpatched output bit for bit, the caller's model is untouched, a clone of the patched model duplicates
  no adapter tensor;
- bad input: an attention mask (not supported on Flux yet), a UNet weight type, an SD1.5 adapter on Flux and the
  XLabs adapter on SD1.5 are refused by name before anything is encoded;
- Kontext reference tokens get no term; IPA Re-weight scales the Flux term.
"""
from __future__ import annotations

import copy
import os

import pytest
import torch

from bench import measure
from testkit.flux_adapters import write_xlabs
from testkit.tiny_flux import CONTEXT, HIDDEN, build_tiny_flux, comfy_flux_forward, flux_inputs


@pytest.fixture(scope="module")
def flux(comfy_nodes):
    pytest.importorskip("diffusers", reason="the tiny Flux's weights come from diffusers' model (testkit/tiny_flux.py)")
    return build_tiny_flux(double_blocks=2, single_blocks=1, seed=0)


@pytest.fixture(scope="module")
def xlabs(flux, ipadapter_dir, run_node):
    sub = ipadapter_dir / "flux_blocks"
    sub.mkdir(exist_ok=True)
    path = str(sub / "xlabs_blocks_tiny.safetensors")
    if not os.path.exists(path):
        write_xlabs(path, tokens=4, clip_dim=40, ctx=CONTEXT, hidden=HIDDEN, blocks=flux.double_blocks, seed=4)
    return run_node("IPA_ModelLoader", ipadapter_file="flux_blocks/xlabs_blocks_tiny.safetensors")["result"][0]


@pytest.fixture(scope="module")
def embeds(xlabs, cv, make_image, run_node):
    return run_node("IPA_Encode", ipadapter=xlabs, clip_vision=cv, image=make_image(7))[0]


def apply(run_node, model, adapter, embeds, **kw):
    args = dict(weight=1.0, start_at=0.0, end_at=1.0)
    args.update(kw)
    return run_node("IPA_Apply", model=model, ipadapter=adapter, embeds=embeds, **args)[0]


def forward(model, order=(1, 0)):
    return comfy_flux_forward(model, flux_inputs(batch=len(order)), list(order))


def test_a_foreign_dit_patch_is_called_through(flux, xlabs, embeds, run_node):
    calls = []

    def foreign(args, extra):
        calls.append(args["img"].shape)
        return extra["original_block"](args)

    m = flux.patcher.clone()
    m.set_model_patch_replace(foreign, "dit", "double_block", 0)
    expected = forward(apply(run_node, flux.patcher, xlabs, embeds))
    got = forward(apply(run_node, m, xlabs, embeds))
    assert len(calls) == 1, "the foreign patch on double block 0 was not called"
    assert torch.equal(got, expected)  # the foreign patch is an identity: the same output, the term still added
    patch = m.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)]
    assert patch is foreign  # the input model keeps its own patch


def test_an_attention_override_set_by_another_node_is_chained(flux, xlabs, embeds, run_node):
    seen = []

    def override(func, *args, **kwargs):
        seen.append(args[0].shape[2])
        return func(*args, **kwargs)

    m = flux.patcher.clone()
    m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = override
    expected = forward(apply(run_node, flux.patcher, xlabs, embeds))
    got = forward(apply(run_node, m, xlabs, embeds))
    assert len(seen) == flux.double_blocks + flux.single_blocks, seen  # every attention went through it
    assert torch.equal(got, expected)


def test_two_adapters_add_up_and_weight_zero_is_the_plain_model(flux, xlabs, embeds, run_node):
    plain = forward(flux.patcher)
    once = forward(apply(run_node, flux.patcher, xlabs, embeds, weight=0.8))
    twice = forward(apply(run_node, apply(run_node, flux.patcher, xlabs, embeds, weight=0.4), xlabs, embeds,
                          weight=0.4))
    effect = float((once - plain).abs().max())
    assert effect > 1e-2
    assert float((twice - once).abs().max()) <= 1e-5 * effect + 1e-6
    assert torch.equal(forward(apply(run_node, flux.patcher, xlabs, embeds, weight=0.0)), plain)


def test_a_range_outside_the_step_is_the_plain_model(flux, xlabs, embeds, run_node):
    """The step at sigma 0.7 (Flux's shifted schedule: 50 % -> sigma 0.76, 90 % -> 0.26): start 0.9 gives no term there,
    end 0.8 keeps it."""
    plain = forward(flux.patcher)
    late = apply(run_node, flux.patcher, xlabs, embeds, start_at=0.9, end_at=1.0)
    assert torch.equal(forward(late), plain)
    early = apply(run_node, flux.patcher, xlabs, embeds, start_at=0.0, end_at=0.8)
    assert not torch.equal(forward(early), plain)


def test_the_caller_model_is_untouched_and_clones_share_the_adapter(flux, xlabs, embeds, run_node):
    before = copy.copy(flux.patcher.model_options.get("transformer_options", {}))
    patched = apply(run_node, flux.patcher, xlabs, embeds)
    assert flux.patcher.model_options.get("transformer_options", {}) == before
    assert ("double_block", 1) in patched.model_options["transformer_options"]["patches_replace"]["dit"]
    clone = patched.clone()
    assert measure.duplicated_bytes(patched.model_options, clone.model_options) == 0
    assert xlabs.patcher in patched.model_options["transformer_options"]["patches_replace"]["dit"][
        ("double_block", 0)].models()


@pytest.mark.parametrize("kw, match", [
    ({"attn_mask": torch.ones(1, 8, 8)}, "attn_mask.*not supported on Flux"),
])
def test_what_flux_does_not_do_yet_is_refused(flux, xlabs, embeds, run_node, kw, match):
    with pytest.raises(Exception, match=match):
        run_node("IPA_ApplyAdvanced", model=flux.patcher, ipadapter=xlabs, embeds=embeds, weight=1.0,
                 weight_type="linear", start_at=0.0, end_at=1.0, embeds_scaling="V only", **kw)


def test_a_unet_weight_type_on_flux_is_refused(flux, xlabs, embeds, run_node):
    with pytest.raises(Exception, match="'style transfer' names UNet layers"):
        run_node("IPA_ApplyAdvanced", model=flux.patcher, ipadapter=xlabs, embeds=embeds, weight=1.0,
                 weight_type="style transfer", start_at=0.0, end_at=1.0, embeds_scaling="V only")
    ramp = run_node("IPA_ApplyAdvanced", model=flux.patcher, ipadapter=xlabs, embeds=embeds, weight=1.0,
                    weight_type="ease out", start_at=0.0, end_at=1.0, embeds_scaling="V only")[0]
    assert not torch.equal(forward(ramp), forward(flux.patcher))


def test_adapters_on_the_wrong_model_are_named(flux, xlabs, embeds, sd15, base_adapter, base_embeds, run_node):
    with pytest.raises(Exception, match=r"XLabs Flux v1.*for Flux models.*no Flux blocks"):
        apply(run_node, sd15, xlabs, embeds)
    with pytest.raises(Exception, match=r"no UNet cross-attention layers \(is it a DiT such as Flux"):
        apply(run_node, flux.patcher, base_adapter, base_embeds)


def test_kontext_reference_tokens_get_no_term(flux, xlabs, embeds, run_node):
    """With a reference latent (Kontext: its tokens follow the latent's own in the image stream), the term covers the
    latent's own tokens only: what enters double block 1 is, for the reference tokens, exactly the unpatched model's
    (a spy dit patch on block 1 records it), and differs for the latent's own tokens."""
    seen = []

    def spy(args, extra):
        seen.append(args["img"].clone())
        return extra["original_block"](args)

    ref = torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(9))
    m = flux.patcher.clone()
    m.set_model_patch_replace(spy, "dit", "double_block", 1)
    patched = apply(run_node, m, xlabs, embeds)
    inputs = flux_inputs(batch=1)
    comfy_flux_forward(m, inputs, [0], ref_latents=[ref])
    comfy_flux_forward(patched, inputs, [0], ref_latents=[ref])
    plain, ours = seen
    own = (inputs["x"].shape[-2] // 2) * (inputs["x"].shape[-1] // 2)
    assert plain.shape[1] == own + (ref.shape[-2] // 2) * (ref.shape[-1] // 2)
    assert float((ours[:, :own] - plain[:, :own]).abs().max()) > 1e-3
    assert torch.equal(ours[:, own:], plain[:, own:])


def test_reweight_scales_the_flux_term(flux, xlabs, embeds, run_node):
    """IPA Re-weight goes over the block path too: factor 0.5 on a weight-0.8 apply = an apply at 0.4."""
    (halved,) = run_node("IPA_Reweight", model=apply(run_node, flux.patcher, xlabs, embeds, weight=0.8), factor=0.5)
    want, plain = forward(apply(run_node, flux.patcher, xlabs, embeds, weight=0.4)), forward(flux.patcher)
    effect = float((want - plain).abs().max())
    assert effect > 1e-2 and float((forward(halved) - want).abs().max()) <= 1e-5 * effect + 1e-6


def test_uncond_term_off_leaves_the_negative_pass_unpatched(flux, xlabs, embeds, run_node):
    """IPA Apply (advanced)'s uncond_term off (cfg > 1 on Flux, XLabs' way): the uncond row of a [1, 0] batch is the
    unpatched model's bit for bit, the cond row is the default apply's."""
    args = dict(model=flux.patcher, ipadapter=xlabs, embeds=embeds, weight=1.0, weight_type="linear", start_at=0.0,
                end_at=1.0, embeds_scaling="V only")
    off = forward(run_node("IPA_ApplyAdvanced", uncond_term=False, **args)[0])
    on = forward(run_node("IPA_ApplyAdvanced", **args)[0])
    plain = forward(flux.patcher)
    assert torch.equal(off[0], plain[0]) and not torch.equal(on[0], plain[0])
    assert torch.equal(off[1], on[1])


def test_an_sd35_adapter_is_described_then_refused_on_a_unet_by_name(ipadapter_dir, sd15, cv, make_image, run_node):
    """InstantX SD3.5 files are recognised (IPA Load Adapter says what they are) and apply to SD3.5 models
    (tests/host/test_oracle_sd3.py); applying one to an SD1.5 model names the family and the model it needs, before
    anything is encoded (no Python error from a missing path)."""
    from testkit.sd3_adapters import write_sd3

    sub = ipadapter_dir / "sd35"
    sub.mkdir(exist_ok=True)
    write_sd3(str(sub / "ip-adapter_sd35_tiny.safetensors"), seed=2)
    out = run_node("IPA_ModelLoader", ipadapter_file="sd35/ip-adapter_sd35_tiny.safetensors")
    adapter = out["result"][0]
    assert "InstantX SD3.5" in " ".join(out["ui"]["text"])
    with pytest.raises(Exception, match=r"InstantX SD3.5.*for SD3.5-Large models, but this model has no "
                                        r"SD3.5-Large blocks"):
        run_node("IPA_Apply", model=sd15, ipadapter=adapter, clip_vision=cv, image=make_image(1), weight=1.0,
                 start_at=0.0, end_at=1.0)
