"""IPA_Reweight: scales adapters already on a MODEL, reusing their tokens (tiny SD1.5 from testkit/tiny_models.py)."""
import pytest
import torch


@pytest.fixture(scope="module")
def apply(run_node, base_adapter, base_embeds):
    def do(model, weight=1.0, **kw):
        return run_node("IPA_Apply", model=model, ipadapter=base_adapter, weight=weight, start_at=0.0, end_at=1.0,
                        embeds=base_embeds, **kw)[0]

    return do


def reweight(run_node, model, factor):
    return run_node("IPA_Reweight", model=model, factor=factor)[0]


def test_factor_one_is_unchanged_and_zero_is_the_plain_model(sd15, apply, run_node, sample):
    patched = apply(sd15)
    assert torch.equal(sample(reweight(run_node, patched, 1.0)), sample(patched))
    assert torch.equal(sample(reweight(run_node, patched, 0.0)), sample(sd15))


def test_half_factor_equals_applying_at_half_weight(sd15, apply, run_node, sample):
    assert torch.equal(sample(reweight(run_node, apply(sd15, 1.0), 0.5)), sample(apply(sd15, 0.5)))


def test_chained_adapters_are_all_scaled_and_the_input_model_is_untouched(sd15, apply, run_node, sample, attn2_patches):
    two = apply(apply(sd15, 0.6), 0.8)
    before = sample(two)
    scaled = reweight(run_node, two, 0.5)
    assert torch.equal(sample(scaled), sample(apply(apply(sd15, 0.3), 0.4)))
    assert torch.equal(sample(two), before)
    runs = {run for p in attn2_patches(scaled).values() for run, _ in p.terms}
    assert sorted(r.weight for r in runs) == [0.3, 0.4]


def test_model_without_adapters_is_refused(sd15, run_node, pack_module):
    errors = pack_module("ip_adapter_core.errors")
    with pytest.raises(errors.InputError) as e:
        reweight(run_node, sd15, 0.5)
    assert str(e.value).startswith("IPA Re-weight Adapters") and "'model'" in str(e.value)


def test_an_apply_at_weight_0_is_found_and_stays_silent(sd15, apply, run_node, sample):
    """Weight 0 installs no patch (zero-weight sites are skipped), yet the model went through an apply node: re-weight
    accepts it (scaling a zero term keeps it zero) instead of saying the model carries no adapter."""
    silent = apply(sd15, 0.0)
    assert not silent.model_options["transformer_options"].get("patches_replace", {}).get("attn2")
    scaled = reweight(run_node, silent, 3.0)
    assert torch.equal(sample(scaled), sample(sd15))
