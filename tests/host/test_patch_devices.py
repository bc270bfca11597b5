"""The attn2 patch across devices and threads (issue #15): ComfyUI 0.33's multi-GPU work units share one patch between
per-GPU clones and call ``.to(their device)`` on it from worker threads every step. The "meta" device stands in for
the second GPU (every op runs there without a GPU, on shapes only).
"""
from __future__ import annotations

import threading
import time

import pytest
import torch

META, CPU = torch.device("meta"), torch.device("cpu")
KEY = ("input", 1, 0)


@pytest.fixture
def patched(run_node, sd15, base_adapter, base_embeds):
    """IPA Apply with a start/end range, so the gate is a real per-step tensor."""
    return run_node("IPA_Apply", model=sd15, ipadapter=base_adapter, weight=1.0, start_at=0.1, end_at=0.9,
                    embeds=base_embeds)[0]


def site_call(patch, device, *, seed=0, sigmas=None):
    """The kv and gate the patch's first term uses for a cond + uncond chunk on ``device``."""
    run, site = patch.terms[0]
    hidden = run.adapter.spec.site_dims[site]
    q = torch.randn(2, 64, hidden, generator=torch.Generator().manual_seed(seed)).to(device)
    sigmas = torch.full((2,), 5.0, device=device) if sigmas is None else sigmas
    return run.kv(site, q, 8, [1, 0]), run.gate({"sigmas": sigmas}, torch.float32)


def test_a_move_to_another_accelerator_keeps_each_devices_caches(patched, attn2_patches):
    patch = attn2_patches(patched)[KEY]
    run = patch.terms[0][0]
    cpu_kv, _ = site_call(patch, CPU)
    meta_kv, meta_gate = site_call(patch, META)
    assert meta_kv[0].device == META and meta_gate.device == META
    patch.to(META)  # a multi-GPU worker moving the shared patch to its device
    assert site_call(patch, CPU)[0] is cpu_kv and site_call(patch, META)[0] is meta_kv, "a cache was rebuilt"
    patch.to(CPU)  # the offload: only the CPU's caches stay
    assert {k[1] for k in run._kv} == {CPU} and set(run._gates) <= {CPU}
    assert site_call(patch, CPU)[0] is cpu_kv


def test_two_devices_from_two_threads_share_one_patch(patched, attn2_patches):
    """A worker for a second accelerator moves the shared patch to its device and calls it, 300 times, while the main
    device's worker calls it too: no error, each gets its own device's tensors, and each device's K'/V' is built once
    (a hit returns the same object). (A move to the CPU is the offload, which drops the others' caches by design, so
    the CPU thread here does not move the patch.)"""
    patch = attn2_patches(patched)[KEY]
    errors, seen = [], {CPU: set(), META: set()}
    start = threading.Barrier(2)

    def worker(device):
        try:
            start.wait()
            sigmas = torch.full((2,), 5.0, device=device)
            for _ in range(300):
                time.sleep(0)  # let the other thread in between steps
                if device != CPU:
                    patch.to(device)
                (k, v), gate = site_call(patch, device, sigmas=sigmas)
                assert k.device == device and v.device == device and gate.device == device
                seen[device].add(id(k))
        except Exception as e:  # noqa: BLE001 - reported below with the thread's device
            errors.append(f"{device}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(d,)) for d in (CPU, META)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert all(len(ids) == 1 for ids in seen.values()), {d: len(ids) for d, ids in seen.items()}


def test_base_attention_is_looked_up_at_call_time(patched, attn2_patches, monkeypatch):
    """A pack that swaps ComfyUI's optimized_attention after this pack was imported is honoured, as by the host's
    own CrossAttention: the swapped function computes the base attention."""
    import comfy.ldm.modules.attention as attention

    patch = attn2_patches(patched)[KEY]
    hidden = patch.terms[0][0].adapter.spec.site_dims[patch.terms[0][1]]
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, n, hidden, generator=g) for n in (64, 77, 77))
    options = {"n_heads": 8, "dim_head": hidden // 8, "attn_precision": None, "cond_or_uncond": [1, 0],
               "sigmas": torch.full((2,), 5.0), "original_shape": [2, 4, 8, 8], "block": KEY[:2], "block_index": 0}
    before = patch(q, k, v, options)
    monkeypatch.setattr(attention, "optimized_attention", lambda *a, **kw: torch.zeros_like(a[0]))
    after = patch(q, k, v, options)
    plain = attention.optimized_attention_for_device(q.device)(q, k, v, 8) if hasattr(
        attention, "optimized_attention_for_device") else None
    # the base term is now 0, so the output is the image term alone
    assert not torch.allclose(after, before)
    if plain is not None:
        torch.testing.assert_close(before - after, plain, rtol=1e-4, atol=1e-4 * plain.abs().max().item())
