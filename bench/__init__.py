"""The benchmarks: bench_step (the per-step cost of the patch), bench_controls (of each control) and measure (the
counting tools, which import no ComfyUI module; tests/host/test_cost.py counts with them too). Run them with
``python3 scripts/bench_step.py`` / ``python3 scripts/bench_controls.py``; bench/README.md explains the figures."""
