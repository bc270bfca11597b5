"""Reliability battery ("never break a user's session"), part 2, on the server of testkit/reliability.py (main.py
--cpu, this pack, the random stand-in models), started once for the module.

1. Long run: N prompts queued back to back (IPA_LONG_RUN_N, default 40; 200 for the full run) alternating two
   adapters, two images and five weights. The server's resident memory after the run stays within
   LONG_RUN_RSS_BOUND_MB of its memory after the first 20 prompts, every repeat of a prompt gives the same pixels,
   and a few prompts re-run alone after POST /free give the same pixels.
2. Interrupt: a 200-step prompt with the adapter, interrupted with POST /interrupt once it runs; then the same model
   without the adapter gives exactly the unpatched pixels obtained before (no patch left behind).
3. Removing this pack's nodes from a workflow gives exactly the output without them: covered by
   tests/host/test_server_workflow.py::test_weight0_equals_the_unpatched_model (the graph with the apply nodes
   bypassed vs. the adapters at weight 0) and by the interrupt test here (the plain graph after patched prompts).

Part 1 (bad inputs): tests/host/test_reliability_inputs.py.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from testkit.reliability import ADAPTER, ADAPTER_PLUS, PROMPT_TIMEOUT, graph, reset_peak, rss_mb, run_ok

pytestmark = pytest.mark.slow

LONG_RUN_N = int(os.environ.get("IPA_LONG_RUN_N", "40"))
LONG_RUN_RSS_BOUND_MB = 150.0


# ---------------------------------------------------------------------------------------------- 1. long run

def _long_run_graph(i: int) -> dict:
    return graph(adapter=(ADAPTER, ADAPTER_PLUS)[i % 2], image=("ref.png", "noise.png")[(i // 2) % 2],
                 weight=(0.5, 0.75, 1.0, 1.25, 1.5)[i % 5])


def test_long_run_memory_and_determinism(reliability_server, reliability_baseline):
    n = LONG_RUN_N
    assert n >= 21, "IPA_LONG_RUN_N must be > 20"
    runs: list[np.ndarray] = []

    def batch(first: int, last: int) -> None:
        ids = []
        for i in range(first, last):  # queued back to back, then collected
            pid, err = reliability_server.submit(_long_run_graph(i))
            assert pid, f"prompt {i} rejected: {err}"
            ids.append(pid)
        for i, pid in zip(range(first, last), ids):
            run = reliability_server.wait(pid, timeout=PROMPT_TIMEOUT)
            assert run.status == "success", f"prompt {i}: {run.status}: {run.error}\n{reliability_server.log_tail()}"
            assert "9" not in run.cached_nodes, f"prompt {i}: the sampler was served from cache"
            runs.append(run.images[0])

    t0 = time.time()
    batch(0, 20)
    rss20 = rss_mb(reliability_server.pid)[0]
    reset_peak(reliability_server.pid)
    batch(20, n)
    wall = time.time() - t0
    rss_end, peak = rss_mb(reliability_server.pid)
    print(f"\n[long run] N={n}: {wall:.1f} s, {wall / n:.2f} s/prompt; server RSS after 20: {rss20:.0f} MB, "
          f"after {n}: {rss_end:.0f} MB ({rss_end - rss20:+.0f} MB), peak {peak:.0f} MB")
    assert rss_end - rss20 < LONG_RUN_RSS_BOUND_MB, (
        f"server RSS grew {rss_end - rss20:.0f} MB between prompt 20 and {n} (bound {LONG_RUN_RSS_BOUND_MB} MB)")
    period = 20  # lcm of the adapter (2), image (4) and weight (5) cycles
    for i in range(period, n):
        assert (runs[i] == runs[i % period]).all(), f"prompt {i} differs from prompt {i % period} (same graph)"
    reliability_server.free()
    for i in (0, 1, 2, 7):
        solo = run_ok(reliability_server, _long_run_graph(i)).images[0]
        assert (solo == runs[i]).all(), f"prompt {i} run alone after /free differs from the queued run"


# ---------------------------------------------------------------------------------------------- 2. interrupt

def test_interrupt_leaves_no_patch_behind(reliability_server):
    plain = run_ok(reliability_server, graph(apply=False)).images[0]
    pid, err = reliability_server.submit(graph(steps=200, weight=1.3))
    assert pid, err
    t0 = time.time()
    while not reliability_server.queue_state().get("queue_running"):
        assert time.time() - t0 < 60, "the 200-step prompt did not start"
        time.sleep(0.05)
    time.sleep(1.5)  # into the sampling loop
    reliability_server.interrupt()
    run = reliability_server.wait(pid, timeout=PROMPT_TIMEOUT)
    kinds = [k for k, _ in run.history.get("status", {}).get("messages", [])]
    print(f"\n[interrupt] status {run.status} after {time.time() - t0:.1f} s; messages {kinds}")
    assert run.status == "error" and "execution_interrupted" in kinds, f"not interrupted: {run.status} {kinds}"
    assert reliability_server.proc.poll() is None
    after = reliability_server.queue(graph(apply=False), timeout=PROMPT_TIMEOUT)
    assert after.status == "success", after.error
    assert "9" not in after.cached_nodes, "the plain sampler was served from cache"
    assert (after.images[0] == plain).all(), (
        f"the model without the adapter gives other pixels after an interrupted patched prompt (max abs diff "
        f"{np.abs(after.images[0].astype(int) - plain).max()})")
