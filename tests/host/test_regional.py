"""IPA Regional Apply in a real ComfyUI (tiny SD1.5 from testkit/tiny_models.py: sites on the 8x8 latent grid and on the
once-halved 4x4 grid; 64x64 masks are stretched to the latent, so an 8x8 cell covers 8x8 mask pixels and a 4x4 cell
16x16).

- Image prompts: bit for bit equal to chaining one IPA Apply per region with the same image, weight and mask.
- Outside a region: recorded at every site during the first step of a real sampling run, the image term
  (patch output - ComfyUI's own attention of the same q/k/v) is exactly 0 on every cell whose mask pixels are all 0,
  and non-zero on every cell whose mask pixels are all 1; cells over the feather are not asserted.
- Text prompts: equal to ComfyUI's own ConditioningSetMask node output (strength = prompt_strength, "default").
"""
from __future__ import annotations

import pytest
import torch

from bench import measure  # storage walker only; imports no ComfyUI module


def feathered_left(width_on=24, feather=16, size=64):
    """1 on columns < width_on, a linear ramp over ``feather`` columns, 0 after."""
    cols = torch.arange(size, dtype=torch.float32)
    row = (1.0 - (cols - width_on + 1) / (feather + 1)).clamp(0.0, 1.0)
    return row.expand(1, size, size).clone()


def right_quarter(size=64):
    mask = torch.zeros(1, size, size)
    mask[:, :, 3 * size // 4:] = 1.0
    return mask


@pytest.fixture(scope="module")
def regional(run_node, sd15, base_adapter, cv):
    def do(model=None, weight_1=1.0, **kw):
        return run_node("IPA_RegionalApply", model=sd15 if model is None else model, ipadapter=base_adapter,
                        clip_vision=cv, weight_1=weight_1, start_at=0.0, end_at=1.0, **kw)

    return do


def ipa_apply(run_node, model, adapter, cv, image, weight, mask):
    return run_node("IPA_Apply", model=model, ipadapter=adapter, weight=weight, start_at=0.0, end_at=1.0, image=image,
                    clip_vision=cv, attn_mask=mask)[0]


def test_two_regions_equal_two_chained_masked_applies(regional, run_node, sd15, base_adapter, cv, make_image, sample):
    m1, m2 = feathered_left(), right_quarter()
    model, positive = regional(image_1=make_image(0), mask_1=m1, weight_1=0.8,
                               image_2=make_image(1, batch=2), mask_2=m2, weight_2=1.3)
    chain = ipa_apply(run_node, sd15, base_adapter, cv, make_image(0), 0.8, m1)
    chain = ipa_apply(run_node, chain, base_adapter, cv, make_image(1, batch=2), 1.3, m2)
    out = sample(model)
    assert torch.equal(out, sample(chain))
    assert not torch.equal(out, sample(sd15))
    assert positive == []


def test_one_adapter_copy_shared_by_every_region(regional, make_image, base_adapter, attn2_patches, sd15,
                                                 sample):
    model, _ = regional(image_1=make_image(0), mask_1=feathered_left(), image_3=make_image(1), mask_3=right_quarter(),
                        image_4=make_image(2), mask_4=torch.ones(8, 8))
    patches = attn2_patches(model)
    runs = {run for p in patches.values() for run, _ in p.terms}
    assert len(runs) == 3
    assert all(run.adapter is base_adapter for run in runs)
    assert all(p.models() == [base_adapter.patcher] for p in patches.values())
    assert "patches_replace" not in sd15.model_options.get("transformer_options", {})
    # after sampling (K'/V' and mask caches filled): the patched model reaches the adapter's own weight storages,
    # everything else it holds (tokens, caches, masks of 3 regions) is smaller than one copy of the weights, and a
    # clone duplicates nothing
    sample(model)
    weights = measure.module_bytes(base_adapter.model)
    held = measure.tensor_storages(model.model_options)
    assert weights.keys() <= held.keys()
    assert sum(n for k, n in held.items() if k not in weights) < sum(weights.values())
    assert measure.duplicated_bytes(model.model_options, model.clone().model_options) == 0


def test_outside_the_mask_is_untouched_at_the_first_step(regional, make_image, sample):
    from comfy.ldm.modules.attention import optimized_attention

    mask = feathered_left()
    model, _ = regional(image_1=make_image(0), mask_1=mask, weight_1=1.5)
    attn2 = model.model_options["transformer_options"]["patches_replace"]["attn2"]
    terms = {}

    def recorder(key, patch):
        def call(q, k, v, extra):
            out = patch(q, k, v, extra)
            if key not in terms:  # the first step only
                plain = optimized_attention(q, k, v, extra["n_heads"], attn_precision=extra.get("attn_precision"),
                                            transformer_options=extra)
                terms[key] = out - plain
            return out

        return call

    for key, patch in list(attn2.items()):
        model.set_model_attn2_replace(recorder(key, patch), *key)
    sample(model, steps=2)
    assert len(terms) == len(attn2)
    for key, term in terms.items():
        n = term.shape[1]
        side = {64: 8, 16: 4}[n]
        cell = 64 // side
        blocks = mask[0].reshape(side, cell, side, cell)
        zero = (blocks.amax(dim=(1, 3)) == 0).flatten()
        full = (blocks.amin(dim=(1, 3)) == 1).flatten()
        assert zero.any() and full.any()
        per_position = term.abs().amax(dim=-1)  # (cond + uncond, n)
        assert torch.equal(per_position[:, zero], torch.zeros_like(per_position[:, zero])), key
        assert per_position[:, full].min() > 0, key


def test_region_prompts_equal_core_conditioning_set_mask(regional, run_node, make_image, make_conds, sd15, sample):
    positive, p1, p3 = make_conds(sd15, 5), make_conds(sd15, 6), make_conds(sd15, 7)
    m1, m3 = feathered_left()[0], right_quarter()  # a 2-D mask is unsqueezed as the core node does
    model, out = regional(image_1=make_image(0), mask_1=m1, image_3=make_image(1), mask_3=m3, positive=positive,
                          prompt_1=p1, prompt_3=p3, prompt_strength=0.7)
    want = list(positive)
    for prompt, mask in ((p1, m1), (p3, m3)):
        want += run_node("ConditioningSetMask", conditioning=prompt, mask=mask, strength=0.7,
                         set_cond_area="default")[0]
    assert len(out) == len(want) == 3
    assert out[0] is positive[0]
    for (got_t, got_d), (want_t, want_d) in zip(out, want):
        assert torch.equal(got_t, want_t) and got_d.keys() == want_d.keys()
        for k in want_d:
            assert (torch.equal(got_d[k], want_d[k]) if isinstance(want_d[k], torch.Tensor)
                    else got_d[k] == want_d[k]), k
    assert p1[0][1].get("mask") is None, "the input conditioning was changed"
    assert torch.isfinite(sample(model, positive=out)).all()


def test_prompts_only_and_no_positive(regional, make_image, make_conds, sd15):
    p2 = make_conds(sd15, 6)
    _, out = regional(image_1=make_image(0), mask_1=torch.ones(8, 8), image_2=make_image(1), mask_2=right_quarter(),
                      prompt_2=p2)
    assert len(out) == 1 and torch.equal(out[0][1]["mask"], right_quarter()) and out[0][1]["mask_strength"] == 1.0
    positive = make_conds(sd15, 5)
    _, out = regional(image_1=make_image(0), mask_1=torch.ones(8, 8), positive=positive)
    assert out == positive and out is not positive


@pytest.mark.parametrize("inputs,names", [
    ({"image_2": "image"}, ("'image_2'", "'mask_2'")),
    ({"mask_3": "mask"}, ("'mask_3'", "'image_3'")),
    ({"prompt_4": "prompt"}, ("'prompt_4'", "'mask_4'")),
])
def test_half_a_region_is_refused_naming_both_inputs(regional, make_image, make_conds, sd15, pack_module, inputs,
                                                     names):
    values = {"image": make_image(1), "mask": right_quarter(), "prompt": make_conds(sd15, 6)}
    errors = pack_module("ip_adapter_core.errors")
    with pytest.raises(errors.InputError) as e:
        regional(image_1=make_image(0), mask_1=right_quarter(), **{k: values[v] for k, v in inputs.items()})
    msg = str(e.value)
    assert msg.startswith("IPA Regional Apply") and all(n in msg for n in names), msg


def test_adapter_for_another_family_is_refused_with_the_node_name(run_node, sd15, sdxl, cv, make_image,
                                                                  make_adapter_file, host, pack_module,
                                                                  tmp_path_factory):
    sdxl_adapter = host.load_adapter(make_adapter_file(tmp_path_factory.mktemp("regional_sdxl"), "base", sdxl, cv))
    errors = pack_module("ip_adapter_core.errors")
    with pytest.raises(errors.IncompatibleError) as e:
        run_node("IPA_RegionalApply", model=sd15, ipadapter=sdxl_adapter, clip_vision=cv, image_1=make_image(0),
                 mask_1=right_quarter(), weight_1=1.0, start_at=0.0, end_at=1.0)
    msg = str(e.value)
    assert msg.startswith("IPA Regional Apply (region 1)") and "'model'" in msg, msg
