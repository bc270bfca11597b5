"""The patch under ComfyUI's own torch.compile wrapper (comfy_api.torch_helpers), on fp32 and on bf16 models.

torch.compile uses the "aot_eager" backend here: it runs Dynamo's tracing and AOT graph capture (what breaks when a
patch does host syncs or untraceable Python) without inductor's minutes-long C++ compile on a CPU.
"""
import pytest
import torch


@pytest.fixture(scope="module")
def adapter(make_adapter_file, host, sd15, cv, tmp_path_factory):
    return host.load_adapter(make_adapter_file(tmp_path_factory.mktemp("compile"), "base", sd15, cv, seed=3))


def _compiled_sample(model, sample):
    import torch._dynamo
    from torch._dynamo.utils import counters
    from comfy_api.torch_helpers.torch_compile import set_torch_compile_wrapper

    torch._dynamo.reset()
    counters.clear()
    compiled = model.clone()
    set_torch_compile_wrapper(compiled, backend="aot_eager")
    out = sample(compiled, steps=3)
    return out, sum(counters["graph_break"].values())


def test_compiled_patched_model_matches_eager_and_adds_no_graph_break(run_node, sd15, adapter, cv, make_image, sample):
    patched = run_node("IPA_Apply", model=sd15, ipadapter=adapter, weight=1.0, start_at=0.2, end_at=0.8,
                       image=make_image(), clip_vision=cv)[0]
    eager = sample(patched, steps=3)
    compiled, breaks_patched = _compiled_sample(patched, sample)
    _, breaks_plain = _compiled_sample(sd15, sample)
    # aot_eager runs the same aten ops in the same order: equal up to fp32 reassociation (1e-5).
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    assert (eager - sample(sd15, steps=3)).abs().max() > 1e-3, "the adapter had no effect, the test proves nothing"
    assert breaks_patched <= breaks_plain, f"the patch adds graph breaks ({breaks_patched} vs {breaks_plain})"


def test_bf16_model_keeps_its_dtype(run_node, make_sd15_model, adapter, cv, make_image, sample):
    """A bf16 UNet gets bf16 image K/V: no dtype mismatch, no upcast of the UNet's activations."""
    model = make_sd15_model(0, dtype=torch.bfloat16)
    seen = []
    patched = run_node("IPA_Apply", model=model, ipadapter=adapter, weight=1.0, start_at=0.0, end_at=1.0,
                       image=make_image(), clip_vision=cv)[0]
    to = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    patch = next(iter(to.values()))
    original = patch.__class__.__call__

    def spy(self, q, k, v, extra_options):
        out = original(self, q, k, v, extra_options)
        seen.append((q.dtype, out.dtype))
        return out

    patch.__class__.__call__ = spy
    try:
        out = sample(patched, steps=2)
    finally:
        patch.__class__.__call__ = original
    assert seen and all(q == o == torch.bfloat16 for q, o in seen), seen[:3]
    assert torch.isfinite(out).all()
