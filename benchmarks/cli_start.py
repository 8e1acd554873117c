"""How much slower `mlkit --help` starts than a bare `python -c pass`.

Both are timed in this one invocation, interleaved, so machine noise hits both
alike. Prints the median wall times and their ratio.

    python benchmarks/cli_start.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    baseline_cmd = [sys.executable, "-c", "pass"]
    mlkit_cmd = [sys.executable, "-m", "mlkit", "--help"]
    wall(baseline_cmd), wall(mlkit_cmd)  # warm the file cache
    base, cli = [], []
    for _ in range(args.repeat):
        base.append(wall(baseline_cmd))
        cli.append(wall(mlkit_cmd))
    b, c = statistics.median(base), statistics.median(cli)
    print(f"python -c pass   median {b * 1000:7.1f} ms")
    print(f"mlkit --help     median {c * 1000:7.1f} ms")
    print(f"ratio mlkit --help / python -c pass: {c / b:.2f}x")


if __name__ == "__main__":
    main()
