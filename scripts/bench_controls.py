"""python3 scripts/bench_controls.py [--help]: the per-step cost of the controls (bench/bench_controls.py,
bench/README.md)."""
import _bootstrap
from bench.bench_controls import main

if __name__ == "__main__":
    _bootstrap.run(main)
