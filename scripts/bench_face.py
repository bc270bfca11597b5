"""python3 scripts/bench_face.py [--help]: the face pipeline benchmark (bench/bench_face.py, bench/README.md)."""
import _bootstrap
from bench.bench_face import main

if __name__ == "__main__":
    _bootstrap.run(main)
