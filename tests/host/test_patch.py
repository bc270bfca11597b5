"""The attn2 patch inside a real ComfyUI: where it fires, the invariants, batch layout, stacking, foreign patches.

Tiny SD1.5 (7 sites incl. ("middle", 0, 0)) and SDXL-shaped (11 sites, t in {0, 1}) models from testkit/tiny_models.py.
Hand computations use torch's scaled_dot_product_attention; tolerance for those: atol 1e-5 (fp32, values ~1).
Sampled latents reached by two different routes (a step split, a batch of two vs one) agree to rtol 1e-5, atol 1e-5.
Invariants (weight 0, empty range, untouched input, determinism) are checked bit for bit.
"""
from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

ATOL = 1e-5


# --------------------------------------------------------------------------------------------- helpers

def sdpa(q, k, v, heads):
    """Reference attention, layout (B, N, heads*d) in and out."""
    b, n, hd = q.shape
    d = hd // heads

    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, d).transpose(1, 2)

    return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(b, n, hd)


def hand_term(q, cond, uncond, wk, wv, weight, cond_or_uncond, heads):
    """weight * Attn(q, K', V') per chunk, with the chunk's own tokens. cond/uncond: (1, T, C); wk/wv: (h, C)."""
    per = q.shape[0] // len(cond_or_uncond)
    parts = []
    for i, c in enumerate(cond_or_uncond):
        tokens = cond if c == 0 else uncond
        k_ip = (tokens @ wk.T).expand(per, -1, -1)
        v_ip = (tokens @ wv.T).expand(per, -1, -1) * weight
        parts.append(sdpa(q[i * per:(i + 1) * per], k_ip, v_ip, heads))
    return torch.cat(parts)


def site_weights(path, index):
    """to_k_ip / to_v_ip of checkpoint layer N = 2 * index + 1, read straight from the file."""
    from safetensors.torch import load_file

    sd = load_file(path)
    n = 2 * index + 1
    return sd[f"ip_adapter.{n}.to_k_ip.weight"].float(), sd[f"ip_adapter.{n}.to_v_ip.weight"].float()


def attn2_patches(model):
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})


def extra_options(heads, dim_head, cond_or_uncond, batch, key):
    return {"n_heads": heads, "dim_head": dim_head, "attn_precision": None, "cond_or_uncond": list(cond_or_uncond),
            "sigmas": torch.full((batch,), 5.0), "block": key[:2], "block_index": key[2]}


def qkv(batch, hidden, seed, nq=16, nk=77):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, nq, hidden, generator=g), torch.randn(batch, nk, hidden, generator=g),
            torch.randn(batch, nk, hidden, generator=g))


def with_recorder(model):
    """A clone whose every attn2 patch is wrapped to record (key looked up, block info, |patched - plain attention|)."""
    from comfy.ldm.modules.attention import optimized_attention

    m = model.clone()
    table = m.model_options["transformer_options"]["patches_replace"]["attn2"]
    fired: dict = {}
    for key, patch in list(table.items()):
        def wrapper(q, k, v, extra, _key=key, _patch=patch):
            out = _patch(q, k, v, extra)
            plain = optimized_attention(q, k, v, extra["n_heads"])
            fired.setdefault(_key, []).append(
                ((extra["block"][0], extra["block"][1], extra["block_index"]), float((out - plain).abs().max())))
            return out
        table[key] = wrapper
    return m, fired


def storage_ptrs(obj) -> set[int]:
    """Data pointers of every tensor storage reachable from obj (dicts, sequences, attributes, slots)."""
    seen: set[int] = set()
    ptrs: set[int] = set()
    stack = [obj]
    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType, str, bytes,
            int, float, bool, torch.device, torch.dtype)
    while stack:
        o = stack.pop()
        if o is None or isinstance(o, skip) or id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, torch.Tensor):
            if o.device.type != "meta":
                ptrs.add(o.untyped_storage().data_ptr())
            continue
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        if hasattr(o, "__dict__"):
            stack.extend(vars(o).values())
        for klass in type(o).__mro__:  # slots of every class (a patch's terms live in its base class)
            for slot in getattr(klass, "__slots__", ()):
                stack.append(getattr(o, slot, None))
    return ptrs


# --------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def attn2_mod(pack_module):
    return pack_module("nodes.patch.attn2")


@pytest.fixture
def model(make_sd15_model):
    return make_sd15_model(0)


@pytest.fixture(scope="module")
def base_path(make_adapter_file, make_sd15_model, cv, tmp_path_factory):
    return make_adapter_file(tmp_path_factory.mktemp("patch"), "base", make_sd15_model(0), cv, seed=0)


@pytest.fixture(scope="module")
def plus_path(make_adapter_file, make_sd15_model, cv, tmp_path_factory):
    return make_adapter_file(tmp_path_factory.mktemp("patch"), "plus", make_sd15_model(0), cv, seed=1)


@pytest.fixture(scope="module")
def adapter(host, base_path):
    return host.load_adapter(base_path)


@pytest.fixture(scope="module")
def image(make_image):
    return make_image(0)


@pytest.fixture
def apply(run_node, cv, image):
    def do(model, adapter, weight=1.0, start_at=0.0, end_at=1.0, *, embeds=None):
        if embeds is not None:
            return run_node("IPA_Apply", model=model, ipadapter=adapter, weight=weight, start_at=start_at,
                            end_at=end_at, embeds=embeds)[0]
        return run_node("IPA_Apply", model=model, ipadapter=adapter, weight=weight, start_at=start_at, end_at=end_at,
                        image=image, clip_vision=cv)[0]

    return do


# --------------------------------------------------------------------------------------------- where it fires

def test_patch_fires_on_every_site_including_middle(model, adapter, apply, host, sample):
    sites = host.model_sites(model)
    keys = {s.key for s in sites}
    assert ("middle", 0, 0) in keys and len(sites) == 7
    patched = apply(model, adapter)
    assert set(attn2_patches(patched)) == keys

    recording, fired = with_recorder(patched)
    sample(recording, steps=2)
    assert set(fired) == keys, f"fired {sorted(fired)} vs sites {sorted(keys)}"
    for key, calls in fired.items():
        assert {c[0] for c in calls} == {key}, "ComfyUI looked the patch up under another block/index"
        assert all(delta > 1e-6 for _, delta in calls), f"the image term added nothing at {key}"


def test_sdxl_shaped_model_every_site_keyed_with_transformer_index(make_sdxl_model, make_clip_vision, make_adapter_file,
                                                                     tmp_path, host, run_node, image, sample):
    model = make_sdxl_model(0)
    cv = make_clip_vision()
    sites = host.model_sites(model)
    keys = {s.key for s in sites}
    depth = {}
    for b, i, t in keys:
        depth[(b, i)] = max(depth.get((b, i), 0), t + 1)
    assert len(sites) == 11 and depth[("middle", 0)] == 2 and max(depth.values()) == 2 and min(depth.values()) == 1
    adapter = host.load_adapter(make_adapter_file(tmp_path, "base", model, cv))
    assert adapter.spec.family == "sdxl"
    patched = run_node("IPA_Apply", model=model, ipadapter=adapter, weight=1.0, start_at=0.0, end_at=1.0,
                       image=image, clip_vision=cv)[0]
    installed = attn2_patches(patched)
    assert set(installed) == keys and len(installed) == len(sites)
    assert all(len(k) == 3 for k in installed)
    for (b, i), d in depth.items():
        assert {k[2] for k in installed if k[:2] == (b, i)} == set(range(d))

    recording, fired = with_recorder(patched)
    out = sample(recording, steps=2)
    assert set(fired) == keys
    assert torch.isfinite(out).all()
    assert not torch.equal(out, sample(model, steps=2))


# --------------------------------------------------------------------------------------------- invariants

def test_weight_zero_is_bit_identical_to_unpatched(model, adapter, apply, sample):
    assert torch.equal(sample(apply(model, adapter, weight=0.0)), sample(model))


def test_range_that_excludes_every_step_is_bit_identical(model, adapter, apply, sample):
    # 4 steps ("normal"): sigmas 14.61, 2.92, 0.93, 0.03; 0.6 -> sigma 1.16, so [0.6, 0.6] holds none of them.
    unpatched = sample(model, steps=4)
    assert torch.equal(sample(apply(model, adapter, start_at=0.6, end_at=0.6), steps=4), unpatched)
    assert not torch.equal(sample(apply(model, adapter), steps=4), unpatched)


def test_start_end_range_gates_exactly_the_steps_inside(model, adapter, apply, sample):
    """[0, 0.5] over 4 steps is active at steps 0 and 1 only (0.5 -> sigma 1.62): it must equal sampling steps 0-1
    with the full-range patch and steps 2-3 with the unpatched model (ComfyUI's start_step / last_step split)."""
    half = apply(model, adapter, start_at=0.0, end_at=0.5)
    full = apply(model, adapter)
    out_half = sample(half, steps=4)
    assert not torch.equal(out_half, sample(model, steps=4))
    assert not torch.equal(out_half, sample(full, steps=4))

    first = sample(full, steps=4, last_step=2, force_full_denoise=False)
    second = sample(model, steps=4, latent=first, noise=torch.zeros_like(first), start_step=2, last_step=4,
                    force_full_denoise=True)
    # the split re-scales the latent in and out (process_latent_in/out): equal up to float rounding, rtol 1e-5
    torch.testing.assert_close(out_half, second, atol=ATOL, rtol=1e-5)
    # steps 0-1 are where the patch acts, so the equality above is not trivially true
    assert not torch.allclose(first, sample(model, steps=4, last_step=2, force_full_denoise=False), atol=1e-4)


def test_input_model_is_untouched(make_sd15_model, adapter, apply, sample):
    import copy

    model = make_sd15_model(0)
    before_options = copy.deepcopy(model.model_options)
    before_weights = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    baseline = sample(model)

    patched = apply(model, adapter)
    sample(patched)
    assert model.model_options == before_options
    assert attn2_patches(model) == {}
    assert torch.equal(sample(model), baseline)
    after = model.model.diffusion_model.state_dict()
    assert all(torch.equal(before_weights[k], after[k]) for k in before_weights)


def test_input_model_with_foreign_patch_is_untouched(model, adapter, apply):
    def foreign(q, k, v, extra):
        from comfy.ldm.modules.attention import optimized_attention

        return optimized_attention(q, k, v, extra["n_heads"])

    model.set_model_attn2_replace(foreign, "input", 1)
    table_before = dict(attn2_patches(model))
    apply(model, adapter)
    assert attn2_patches(model) == table_before
    assert attn2_patches(model)[("input", 1)] is foreign


def test_running_twice_gives_identical_output(model, adapter, apply, sample):
    patched = apply(model, adapter)
    first = sample(patched)
    assert torch.equal(sample(patched), first)
    assert torch.equal(sample(apply(model, adapter)), first)


# --------------------------------------------------------------------------------------------- batch layout

@pytest.mark.parametrize("order", [[1, 0], [0, 1], [0], [1]])
def test_each_chunk_gets_its_own_tokens(model, adapter, apply, host, run_node, cv, image, base_path, order):
    embeds = run_node("IPA_Encode", ipadapter=adapter, clip_vision=cv, image=image)[0]
    patched = apply(model, adapter, weight=0.8, embeds=embeds)
    site = host.model_sites(model)[2]  # a 64-wide site
    patch = attn2_patches(patched)[site.key]
    per = 2
    q, k, v = qkv(per * len(order), site.hidden, seed=5)
    heads = 8
    out = patch(q, k, v, extra_options(heads, site.hidden // heads, order, q.shape[0], site.key))
    wk, wv = site_weights(base_path, 2)
    expected = sdpa(q, k, v, heads) + hand_term(q, embeds.cond, embeds.uncond, wk, wv, 0.8, order, heads)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    assert not torch.equal(embeds.cond, embeds.uncond)


def test_cfg_one_runs_the_cond_chunk_only(model, adapter, apply, sample):
    m = apply(model, adapter).clone()
    seen = []
    table = m.model_options["transformer_options"]["patches_replace"]["attn2"]
    for key, fn in list(table.items()):
        def spy(q, k, v, extra, _fn=fn):
            seen.append(list(extra["cond_or_uncond"]))
            return _fn(q, k, v, extra)
        table[key] = spy
    out = sample(m, cfg=1.0)
    assert seen and all(s == [0] for s in seen)
    assert torch.isfinite(out).all()
    assert not torch.equal(out, sample(model, cfg=1.0))


def test_latent_batch_of_two(model, adapter, apply, sample):
    patched = apply(model, adapter)
    one = sample(patched, batch=1)
    two = sample(patched, batch=2)
    assert two.shape[0] == 2 and torch.isfinite(two).all()
    # prepare_noise draws the batch in order, so item 0 sees the same noise and conditioning as the batch of one
    torch.testing.assert_close(two[:1], one, atol=ATOL, rtol=1e-5)
    assert not torch.allclose(two[0], two[1])
    assert not torch.allclose(two, sample(model, batch=2), atol=1e-4)


# --------------------------------------------------------------------------------------------- composition

def test_two_chained_adapters_sum_their_terms(model, adapter, apply, host, run_node, cv, image, make_image,
                                              base_path, plus_path, sample):
    plus = host.load_adapter(plus_path)
    e1 = run_node("IPA_Encode", ipadapter=adapter, clip_vision=cv, image=image)[0]
    e2 = run_node("IPA_Encode", ipadapter=plus, clip_vision=cv, image=make_image(7))[0]
    m1 = apply(model, adapter, weight=0.7, embeds=e1)
    m2 = apply(m1, plus, weight=0.5, embeds=e2)
    sites = host.model_sites(model)
    table = attn2_patches(m2)
    assert set(table) == {s.key for s in sites}
    heads = 8
    order = [1, 0]
    for i, site in enumerate(sites):
        patch = table[site.key]
        assert len(patch.terms) == 2, f"{site.key} holds {len(patch.terms)} terms"
        q, k, v = qkv(2, site.hidden, seed=10 + i)
        out = patch(q, k, v, extra_options(heads, site.hidden // heads, order, 2, site.key))
        wk1, wv1 = site_weights(base_path, i)
        wk2, wv2 = site_weights(plus_path, i)
        expected = (sdpa(q, k, v, heads)
                    + hand_term(q, e1.cond, e1.uncond, wk1, wv1, 0.7, order, heads)
                    + hand_term(q, e2.cond, e2.uncond, wk2, wv2, 0.5, order, heads))
        torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    # the first model keeps one term per site
    assert all(len(p.terms) == 1 for p in attn2_patches(m1).values())
    assert not torch.equal(sample(m2), sample(m1))


@pytest.mark.parametrize("foreign_key", [("input", 1), ("input", 1, 0)], ids=["2-tuple", "3-tuple"])
def test_foreign_patch_is_called_through(model, adapter, apply, run_node, cv, image, host, base_path, sample,
                                         foreign_key):
    from comfy.ldm.modules.attention import optimized_attention

    calls = []

    def foreign(q, k, v, extra):
        calls.append((extra["block"], extra["block_index"]))
        return 0.5 * optimized_attention(q, k, v, extra["n_heads"]) + 0.1

    model.set_model_attn2_replace(foreign, *foreign_key)
    embeds = run_node("IPA_Encode", ipadapter=adapter, clip_vision=cv, image=image)[0]
    patched = apply(model, adapter, weight=1.0, embeds=embeds)
    site = host.model_sites(model)[0]
    assert site.key == ("input", 1, 0)
    patch = attn2_patches(patched)[site.key]
    assert patch.inner is foreign

    heads = 8
    q, k, v = qkv(2, site.hidden, seed=3)
    out = patch(q, k, v, extra_options(heads, site.hidden // heads, [0, 1], 2, site.key))
    wk, wv = site_weights(base_path, 0)
    expected = 0.5 * sdpa(q, k, v, heads) + 0.1 + hand_term(q, embeds.cond, embeds.uncond, wk, wv, 1.0, [0, 1], heads)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)

    calls.clear()
    out_patched = sample(patched, steps=2)
    assert calls and all(c == (("input", 1), 0) for c in calls)
    assert torch.isfinite(out_patched).all()
    assert not torch.equal(out_patched, sample(model, steps=2))


# --------------------------------------------------------------------------------------------- sharing

def test_adapter_weights_are_loaded_with_the_model(model, adapter, apply, host, plus_path):
    """ComfyUI loads what model_patches_models() lists (as a set) together with the UNet: every adapter's patcher."""
    plus = host.load_adapter(plus_path)
    patched = apply(apply(model, adapter), plus)
    listed = patched.model_patches_models()
    assert adapter.patcher in listed and plus.patcher in listed
    assert all(m is adapter.patcher or m is plus.patcher for m in listed)
    assert model.model_patches_models() == []


def test_clone_of_patched_model_shares_adapter_tensors(model, adapter, apply):
    patched = apply(model, adapter)
    original = storage_ptrs(patched.model_options)
    weights = {p.untyped_storage().data_ptr() for p in adapter.model.parameters()}
    assert weights <= original, "the adapter weights are not reachable from the patched model_options"
    clone = patched.clone()
    copied = storage_ptrs(clone.model_options) - original
    assert not copied, f"clone() made {len(copied)} new tensor storages"
