"""Fidelity on SD3.5: one forward of ComfyUI's own MMDiT with an InstantX SD3.5 adapter applied by this pack's nodes
equals diffusers' SD3Transformer2DModel with the same adapter loaded (its SD3IPAdapterJointAttnProcessor2_0); and the
joint block path (nodes/patch/joint.py) among other patches.

The same random weights go into a tiny diffusers SD3 and ComfyUI's MMDiT (testkit/tiny_sd3.py: 2 joint blocks of
hidden 128, 2 heads of 64, random RMS qk-norm weights, so the norm-ratio recovery is really exercised); the same random
InstantX file (testkit/sd3_adapters.py: resampler depth 4, FF x4, 2 heads, 8 tokens; its encoder width is the tiny
CLIP vision's 48) is loaded by diffusers (``transformer._load_ip_adapter_weights``) and by this pack (IPA Load
Adapter, IPA Encode Image / IPA Apply with image + CLIP vision). Both get the same features: the tiny ComfyUI CLIP
vision's penultimate states of the reference image for cond rows, zeros of that shape for uncond rows (diffusers'
negative image prompt, EncoderNeed.uncond "zero features"). The ComfyUI forward goes through BaseModel.apply_model as
the samplers call it (so the pack's APPLY_MODEL wrapper gives the model's own model_sampling), the diffusion model's
output taken by a hook; diffusers gets timestep = 1000 * sigma.

Tolerance (fp32, CPU): |comfy - diffusers| <= 1e-5 + 1e-4 * max|diffusers|, while the image prompt moves the output
by more than 100x that.
"""
from __future__ import annotations

import copy
import os

import pytest
import torch

from bench import measure
from testkit.sd3_adapters import TINY, sd3_state_dict, save_sd3, save_sd3_bin, to_diffusers
from testkit.tiny_sd3 import build_tiny_sd3, comfy_sd3_forward, diffusers_sd3_forward, sd3_inputs

RTOL, ATOL = 1e-4, 1e-5
ENC = 48  # the default tiny CLIP vision's hidden width: the adapter reads its penultimate states
SD3_FILE = "oracle_sd3/instantx_sd35_tiny.bin"
WEIGHT = 0.7


@pytest.fixture(scope="module")
def sd3(comfy_nodes):
    pytest.importorskip("diffusers", reason="diffusers is the numerical oracle for this test")
    return build_tiny_sd3(blocks=2, seed=0)


def _write(ipadapter_dir, name, *, seed, blocks=2):
    sub = ipadapter_dir / "oracle_sd3"
    sub.mkdir(exist_ok=True)
    sd = sd3_state_dict(seed=seed, **{**TINY, "enc": ENC, "blocks": blocks, "hidden": 64 * blocks})
    path = sub / name
    if not path.exists():
        (save_sd3_bin if name.endswith(".bin") else save_sd3)(path, sd)
    return sd


@pytest.fixture(scope="module")
def sd3_file(sd3, ipadapter_dir):
    """The adapter's flat state dict (diffusers reads it too); the file is the published .bin layout."""
    return _write(ipadapter_dir, os.path.basename(SD3_FILE), seed=5)


@pytest.fixture(scope="module")
def adapter(sd3_file, run_node):
    out = run_node("IPA_ModelLoader", ipadapter_file=SD3_FILE)
    assert "InstantX SD3.5" in " ".join(out["ui"]["text"])
    return out["result"][0]


@pytest.fixture(scope="module")
def embeds(adapter, cv, make_image, run_node):
    return run_node("IPA_Encode", ipadapter=adapter, clip_vision=cv, image=make_image(11))[0]


def apply(run_node, model, adapter, embeds, **kw):
    args = dict(weight=1.0, start_at=0.0, end_at=1.0)
    args.update(kw)
    return run_node("IPA_Apply", model=model, ipadapter=adapter, embeds=embeds, **args)[0]


def forward(model, order=(1, 0), sigma=0.7, **kw):
    return comfy_sd3_forward(model, sd3_inputs(batch=len(order), sigma=sigma), list(order), **kw)


def _diffusers_with(sd3, sd3_file, weight):
    reference = copy.deepcopy(sd3.reference)
    reference._load_ip_adapter_weights(to_diffusers(sd3_file), low_cpu_mem_usage=False)
    processors = [p for p in reference.attn_processors.values() if hasattr(p, "to_k_ip")]
    assert len(processors) == sd3.blocks
    for p in processors:
        p.scale = weight
    return reference


def _close(actual, expected, without):
    effect = float((expected - without).abs().max())
    tolerance = ATOL + RTOL * float(expected.abs().max())
    assert effect > 100 * tolerance, f"the image prompt barely moves the output ({effect} vs tolerance {tolerance})"
    delta = float((actual - expected).abs().max())
    assert delta <= tolerance, f"max |comfy - diffusers| = {delta:.3g} > {tolerance:.3g} (effect {effect:.3g})"
    return delta, effect


# ---------------------------------------------------------------------------------------------- the oracle

def test_tiny_sd3_matches_diffusers_without_adapter(sd3, pack_module):
    for sigma in (0.9, 0.35):
        inputs = sd3_inputs(batch=2, sigma=sigma)
        torch.testing.assert_close(comfy_sd3_forward(sd3.patcher, inputs, [0, 1]),
                                   diffusers_sd3_forward(sd3.reference, inputs), rtol=RTOL, atol=ATOL)
    host = pack_module("nodes.patch.host")
    assert [s.key for s in host.dit_sites(sd3.patcher, ("joint",))] == [("joint", 0, 0), ("joint", 1, 0)]
    assert {s.hidden for s in host.dit_sites(sd3.patcher, ("joint",))} == {sd3.hidden}
    assert host.model_context_dim(sd3.patcher) == sd3.hidden


@pytest.mark.parametrize("sigma", [0.9, 0.35])
@pytest.mark.parametrize("order", [[0], [1, 0], [0, 1]], ids=["cond-only", "uncond-cond", "cond-uncond"])
def test_instantx_sd3_forward_matches_diffusers(sd3, sd3_file, adapter, embeds, cv, make_image, run_node, order,
                                                sigma):
    patched = apply(run_node, sd3.patcher, adapter, embeds, weight=WEIGHT)
    reference = _diffusers_with(sd3, sd3_file, WEIGHT)
    with torch.no_grad():
        # SigLIP's processor squashes the 40 x 36 image to the encoder's square: no centre crop
        cond = cv.encode_image(make_image(11), crop=False)["penultimate_hidden_states"].float()  # (1, N, E)
    features = torch.cat([cond if c == 0 else torch.zeros_like(cond) for c in order])  # (B, N, E), one per row
    inputs = sd3_inputs(batch=len(order), sigma=sigma)
    expected = diffusers_sd3_forward(reference, inputs, joint_attention_kwargs={"ip_adapter_image_embeds": features})
    without = diffusers_sd3_forward(sd3.reference, inputs)
    actual = comfy_sd3_forward(patched, inputs, order)
    delta, effect = _close(actual, expected, without)
    print(f"\nInstantX SD3.5, weight {WEIGHT}, chunks {order}, sigma {sigma}: max |comfy - diffusers| = {delta:.3g}, "
          f"effect {effect:.3g}, max |diffusers| {float(expected.abs().max()):.3g}")
    # a caller outside apply_model (no APPLY_MODEL wrapper: the model's model_sampling from install) gets the same
    direct = comfy_sd3_forward(patched, inputs, order, through="diffusion_model")
    assert float((direct - actual).abs().max()) <= 1e-6 * effect
    assert not sd3.patcher.model_options.get("transformer_options", {}).get("patches_replace")


def test_image_and_clip_vision_on_the_apply_node_equal_the_encoded_embeds(sd3, adapter, embeds, cv, make_image,
                                                                        run_node):
    direct = run_node("IPA_Apply", model=sd3.patcher, ipadapter=adapter, image=make_image(11), clip_vision=cv,
                      weight=WEIGHT, start_at=0.0, end_at=1.0)[0]
    assert torch.equal(forward(direct), forward(apply(run_node, sd3.patcher, adapter, embeds, weight=WEIGHT)))
    assert embeds.cond.shape == (1, 17, ENC) and torch.equal(embeds.uncond, torch.zeros(1, 17, ENC))


def test_mmdit_x_blocks_get_the_term_on_their_joint_attention_only(comfy_nodes, ipadapter_dir, cv, make_image,
                                                                   run_node):
    """SD3.5 Medium's MMDiT-X blocks run a second, image-only attention; the term goes on the joint one (diffusers'
    processor), recognised by its length."""
    pytest.importorskip("diffusers")
    model = build_tiny_sd3(blocks=2, seed=3, dual_attention_layers=(0,))
    assert model.patcher.model.diffusion_model.joint_blocks[0].x_block.x_block_self_attn
    sd = _write(ipadapter_dir, "instantx_sd35_tiny_x.safetensors", seed=6)
    ada = run_node("IPA_ModelLoader", ipadapter_file="oracle_sd3/instantx_sd35_tiny_x.safetensors")["result"][0]
    emb = run_node("IPA_Encode", ipadapter=ada, clip_vision=cv, image=make_image(12))[0]
    patched = apply(run_node, model.patcher, ada, emb, weight=WEIGHT)
    # diffusers' loader assumes one processor per block (it would put an IP processor on attn2 too): its IP
    # processors go on each block's joint attention by hand, attn2 keeps its own processor
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0

    reference = copy.deepcopy(model.reference)
    parts = to_diffusers(sd)
    reference.image_proj = reference._convert_ip_adapter_image_proj_to_diffusers(parts["image_proj"],
                                                                                 low_cpu_mem_usage=False)
    processors = dict(reference.attn_processors)
    assert "transformer_blocks.0.attn2.processor" in processors
    for i in range(model.blocks):
        proc = SD3IPAdapterJointAttnProcessor2_0(hidden_size=model.hidden, ip_hidden_states_dim=model.hidden,
                                                 head_dim=64, timesteps_emb_dim=TINY["dim"])
        proc.load_state_dict({k.split(".", 1)[1]: v for k, v in parts["ip_adapter"].items()
                              if k.startswith(f"{i}.")}, strict=True)
        proc.scale = WEIGHT
        processors[f"transformer_blocks.{i}.attn.processor"] = proc
    reference.set_attn_processor(processors)
    features = torch.cat([torch.zeros_like(emb.cond), emb.cond])
    inputs = sd3_inputs(batch=2, sigma=0.6)
    expected = diffusers_sd3_forward(reference, inputs, joint_attention_kwargs={"ip_adapter_image_embeds": features})
    delta, effect = _close(comfy_sd3_forward(patched, inputs, [1, 0]), expected,
                           diffusers_sd3_forward(model.reference, inputs))
    print(f"\nMMDiT-X: max |comfy - diffusers| = {delta:.3g}, effect {effect:.3g}")


# ---------------------------------------------------------------------------------------------- the path

def test_the_resampler_runs_once_per_call_and_nothing_syncs(sd3, adapter, embeds, run_node):
    patched = apply(run_node, sd3.patcher, adapter, embeds)
    calls = []
    handle = adapter.model.image_proj.register_forward_hook(lambda m, a, out: calls.append(a[1].clone()))
    try:
        inputs = sd3_inputs(batch=2, sigma=0.5)
        forward(patched, sigma=0.5)
        assert len(calls) == 1 and torch.allclose(calls[0], torch.full((2,), 500.0))  # 2 blocks, one projection
        # one step in three calls (two cond calls, e.g. area conds, then the uncond) with the step's sigmas object:
        # the second cond call reuses the first one's projection, the uncond call makes its own
        sigmas = torch.full((1,), 0.4)
        for order in ([0], [0], [1]):
            comfy_sd3_forward(patched, sd3_inputs(batch=1, sigma=0.4), order, sigmas=sigmas)
        assert len(calls) == 3, calls
        with measure.OpCounter() as plain_ops:
            comfy_sd3_forward(sd3.patcher, inputs, [1, 0], sigmas=torch.full((1,), 0.3))
        with measure.OpCounter() as ops:
            comfy_sd3_forward(patched, inputs, [1, 0], sigmas=torch.full((1,), 0.3))
    finally:
        handle.remove()
    assert sum(ops.syncs.values()) == sum(plain_ops.syncs.values()), (ops.syncs, plain_ops.syncs)
    print(f"\nsyncs per call: patched {dict(ops.syncs)}, unpatched {dict(plain_ops.syncs)}; ops "
          f"{ops.total} vs {plain_ops.total}")


def test_weight_zero_and_a_range_outside_the_step_are_the_plain_model(sd3, adapter, embeds, run_node):
    """The step at sigma 0.7 (SD3's shift 3 schedule: 80 % -> sigma 0.43, 90 % -> 0.25): start 0.9 gives no term
    there, end 0.8 keeps it."""
    plain = forward(sd3.patcher)
    assert torch.equal(forward(apply(run_node, sd3.patcher, adapter, embeds, weight=0.0)), plain)
    assert torch.equal(forward(apply(run_node, sd3.patcher, adapter, embeds, start_at=0.9, end_at=1.0)), plain)
    assert not torch.equal(forward(apply(run_node, sd3.patcher, adapter, embeds, start_at=0.0, end_at=0.8)), plain)


def test_two_applies_add_up_and_reweight_scales(sd3, adapter, embeds, run_node):
    plain = forward(sd3.patcher)
    once = forward(apply(run_node, sd3.patcher, adapter, embeds, weight=0.8))
    twice = forward(apply(run_node, apply(run_node, sd3.patcher, adapter, embeds, weight=0.4), adapter, embeds,
                          weight=0.4))
    effect = float((once - plain).abs().max())
    assert effect > 1e-2
    assert float((twice - once).abs().max()) <= 1e-5 * effect + 1e-6
    (halved,) = run_node("IPA_Reweight", model=apply(run_node, sd3.patcher, adapter, embeds, weight=1.6), factor=0.5)
    assert float((forward(halved) - once).abs().max()) <= 1e-5 * effect + 1e-6


def test_a_foreign_dit_patch_and_attention_override_are_called_through(sd3, adapter, embeds, run_node):
    calls, seen = [], []

    def foreign(args, extra):
        calls.append(args["img"].shape)
        return extra["original_block"](args)

    def override(func, *args, **kwargs):
        seen.append(args[0].shape[1])
        return func(*args, **kwargs)

    m = sd3.patcher.clone()
    m.set_model_patch_replace(foreign, "dit", "double_block", 0)
    m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = override
    expected = forward(apply(run_node, sd3.patcher, adapter, embeds))
    got = forward(apply(run_node, m, adapter, embeds))
    assert len(calls) == 1, "the foreign patch on joint block 0 was not called"
    assert len(seen) == sd3.blocks, seen  # every joint attention went through the other node's override
    assert torch.equal(got, expected)
    assert m.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)] is foreign


def test_the_caller_model_is_untouched_and_clones_share_the_adapter(sd3, adapter, embeds, run_node):
    before = copy.copy(sd3.patcher.model_options.get("transformer_options", {}))
    patched = apply(run_node, sd3.patcher, adapter, embeds)
    assert sd3.patcher.model_options.get("transformer_options", {}) == before
    dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert set(dit) == {("double_block", 0), ("double_block", 1)}
    clone = patched.clone()
    assert measure.duplicated_bytes(patched.model_options, clone.model_options) == 0
    assert adapter.patcher in dit[("double_block", 0)].models()


def test_uncond_term_off_leaves_the_negative_pass_unpatched(sd3, adapter, embeds, run_node):
    args = dict(model=sd3.patcher, ipadapter=adapter, embeds=embeds, weight=1.0, weight_type="ease out",
                start_at=0.0, end_at=1.0, embeds_scaling="V only")
    off = forward(run_node("IPA_ApplyAdvanced", uncond_term=False, **args)[0])
    on = forward(run_node("IPA_ApplyAdvanced", **args)[0])
    plain = forward(sd3.patcher)
    assert torch.equal(off[0], plain[0]) and not torch.equal(on[0], plain[0])
    assert torch.equal(off[1], on[1]) and not torch.equal(on[1], plain[1])


def test_embeds_round_trip_through_the_embeds_file_format(sd3, adapter, embeds, run_node, pack_module):
    io = pack_module("ip_adapter_core.embeds_io")
    tensors, metadata = io.to_safetensors_dict(embeds)
    loaded = io.from_safetensors_dict(tensors, metadata, name="sd35.safetensors")
    assert torch.equal(forward(apply(run_node, sd3.patcher, adapter, loaded)),
                       forward(apply(run_node, sd3.patcher, adapter, embeds)))


# ---------------------------------------------------------------------------------------------- refused by name

@pytest.mark.parametrize("kw, match", [
    ({"attn_mask": torch.ones(1, 8, 8)}, "attn_mask.*not supported on SD3.5"),
    ({"embeds_scaling": "K+V"}, "embeds_scaling.*'K\\+V' is not supported on SD3.5"),
    ({"unfold_batch": True}, "unfold_batch.*not supported on SD3.5"),
    ({"weight_type": "style transfer"}, "'style transfer' names UNet layers"),
])
def test_what_sd3_does_not_do_is_refused(sd3, adapter, embeds, run_node, kw, match):
    args = dict(weight=1.0, weight_type="linear", start_at=0.0, end_at=1.0, embeds_scaling="V only")
    args.update(kw)
    with pytest.raises(Exception, match=match):
        run_node("IPA_ApplyAdvanced", model=sd3.patcher, ipadapter=adapter, embeds=embeds, **args)


def test_several_images_and_combining_are_refused_by_name(sd3, adapter, cv, make_image, run_node):
    two = run_node("IPA_Encode", ipadapter=adapter, clip_vision=cv, image=make_image(3, batch=2))[0]
    assert two.cond.shape[0] == 2
    with pytest.raises(Exception, match=r"InstantX SD3.5.*one reference image per apply; the embeds hold 2"):
        apply(run_node, sd3.patcher, adapter, two)
    with pytest.raises(Exception, match=r"IPA Combine Embeds.*InstantX SD3.5.*cannot be combined"):
        run_node("IPA_CombineEmbeds", embeds=two, method="average")
    with pytest.raises(Exception, match=r"IPAdapter Combine Embeds.*InstantX SD3.5.*cannot be combined"):
        run_node("IPAdapterCombineEmbeds", embed1=two, embed2=two, method="concat")  # the old pack's ID, served


def test_a_zero_qk_norm_weight_is_refused_at_plan_time(sd3, adapter, embeds, run_node):
    m = sd3.patcher.clone()
    dm = m.model.diffusion_model
    weight = dm.joint_blocks[1].x_block.attn.ln_k.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[3] = 0.0
        with pytest.raises(Exception, match=r"joint block 1.*qk-norm weight is 0 at head dims \[3\]"):
            apply(run_node, m, adapter, embeds)
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def test_an_sd35_adapter_on_flux_is_named(sd3, adapter, embeds, run_node):
    from testkit.tiny_flux import build_tiny_flux

    try:
        flux = build_tiny_flux(double_blocks=1, single_blocks=1, seed=0)
    except TypeError as e:  # FluxParams gained fields the tiny Flux config does not give (ComfyUI 0.33)
        pytest.skip(f"testkit.tiny_flux cannot build a Flux on this ComfyUI: {e}")
    with pytest.raises(Exception, match=r"InstantX SD3.5.*for SD3.5-Large models.*no SD3.5-Large blocks"):
        apply(run_node, flux.patcher, adapter, embeds)


def test_adapters_on_the_wrong_model_are_named(sd3, adapter, embeds, sd15, base_adapter, base_embeds, run_node):
    with pytest.raises(Exception, match=r"InstantX SD3.5.*for SD3.5-Large models.*no SD3.5-Large blocks"):
        apply(run_node, sd15, adapter, embeds)
    with pytest.raises(Exception, match=r"no UNet cross-attention layers \(is it a DiT such as Flux or SD3"):
        apply(run_node, sd3.patcher, base_adapter, base_embeds)
    with pytest.raises(Exception, match=r"the embeds were made with adapter"):
        apply(run_node, sd3.patcher, adapter, base_embeds)
