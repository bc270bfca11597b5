"""python3 scripts/bench_flux.py [--help]: the Flux per-step cost benchmark (bench/bench_flux.py, bench/README.md)."""
import _bootstrap
from bench.bench_flux import main

if __name__ == "__main__":
    _bootstrap.run(main)
