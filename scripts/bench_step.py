"""python3 scripts/bench_step.py [--help]: the per-step cost benchmark (bench/bench_step.py, bench/README.md)."""
import _bootstrap
from bench.bench_step import main

if __name__ == "__main__":
    _bootstrap.run(main)
