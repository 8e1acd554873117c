"""How much `mlkit.data.load` of a user's CSV costs against pyarrow reading the same file.

One invocation writes a seeded CSV (default 1,000,000 rows, 20 columns of mixed types: 11
numbers, some with gaps, 5 categories, some with gaps, 2 dates, a boolean and an id) and the
label, then times, alternating in one process:

- the baseline, ``pyarrow.csv.read_csv`` of the file;
- ``mlkit.data.load(path, target="label")``: read, canonical types, the checks, the split,
  the preprocessing fitted on train and applied to every row, the content hash.

A first round of each is untimed: it warms the file cache, the allocators and the memory
they hold (on some virtual machines the host backs memory only at its first touch, about
3 s/GB, more than the work itself; the untimed round pays that for both). Prints the median
wall time of each over ``--rounds`` and their ratio (target: load at most 3x the read), and
the time of each stage of the last load. Then, in a fresh process so that nothing else is
in it, one load's peak memory above the interpreter's against the size of the float32
arrays it returns (target: at most 4x).

    python benchmarks/data_load.py [--rows 1000000] [--rounds 5] [--keep PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TARGET_TIME = 3.0
TARGET_MEMORY = 4.0

TIMES = r"""
import json, statistics, sys, time, warnings
warnings.simplefilter("ignore")
path, rounds = sys.argv[1], int(sys.argv[2])
import pyarrow.csv
import mlkit.data, mlkit.preprocess, mlkit.table_checks, mlkit.tables
stages = {}
def wrap(owner, name, static=False):
    fn = getattr(owner, name)
    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*(a[1:] if static else a), **k)
        finally:
            stages[name] = stages.get(name, 0) + time.perf_counter() - t
    setattr(owner, name, classmethod(timed) if static else timed)
wrap(mlkit.tables, "read_table")
wrap(mlkit.tables, "canonical_hash")
wrap(mlkit.table_checks, "check_table")
wrap(mlkit.preprocess.Preprocessor, "fit", static=True)
wrap(mlkit.preprocess.Preprocessor, "transform")
wrap(mlkit.preprocess.Preprocessor, "encode_target")
out = {"pyarrow": [], "mlkit": []}
for r in range(rounds + 1):  # round 0 is untimed
    t = time.perf_counter()
    table = pyarrow.csv.read_csv(path)
    read = time.perf_counter() - t
    del table
    stages.clear()
    t = time.perf_counter()
    ds = mlkit.data.load(path, target="label")
    load = time.perf_counter() - t
    out["features"] = len(ds.feature_names)
    del ds
    if r:
        out["pyarrow"].append(read)
        out["mlkit"].append(load)
        print(f"round {r}: pyarrow {read:.2f} s, mlkit.data.load {load:.2f} s", file=sys.stderr)
out["stages"] = stages
print(json.dumps(out))
"""

MEMORY = r"""
import json, resource, sys, warnings
warnings.simplefilter("ignore")
import mlkit.data, mlkit.preprocess, mlkit.table_checks, mlkit.tables
def rss_mb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20
before = rss_mb()
ds = mlkit.data.load(sys.argv[1], target="label")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
arrays = sum(s.X.nbytes + s.y.nbytes for s in (ds.train, ds.val, ds.test)) / 2**20
print(json.dumps({"peak_mb": peak, "array_mb": arrays}))
"""


def write_csv(path: Path, rows: int, seed: int = 0) -> None:
    """A seeded table of mixed types, written with pyarrow (fast and exact)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    rng = np.random.default_rng(seed)
    cols: dict[str, object] = {"customer_id": pa.array([f"c{i:08d}" for i in range(rows)])}
    score = np.zeros(rows)
    for i in range(11):
        values = rng.normal(i, 1 + i, rows)
        score += values * (0.1 if i % 2 else -0.05)
        mask = rng.random(rows) < (0.05 if i % 3 == 0 else 0.0)
        cols[f"num_{i}"] = pa.array(values.round(3), mask=mask)
    for i, size in enumerate((3, 5, 8, 12, 30)):
        names = np.array([f"cat{i}_{k}" for k in range(size)])
        picks = rng.integers(0, size, rows)
        score += (picks % 3) * 0.2
        cols[f"cat_{i}"] = pa.array(names[picks], mask=rng.random(rows) < 0.02)
    for i in range(2):
        days = rng.integers(0, 2000, rows).astype("timedelta64[D]")
        cols[f"date_{i}"] = pa.array(np.datetime64("2019-01-01") + days)
    cols["flag"] = pa.array(rng.random(rows) < 0.3)
    cols["label"] = pa.array(np.where(score + rng.normal(0, 2, rows) > np.median(score), "a", "b"))
    pa_csv.write_csv(pa.table(cols), path)


def child(script: str, *args: object) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"the benchmark's child failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="write the CSV here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlkit-bench-data-") as tmp:
        path = args.keep or Path(tmp) / "table.csv"
        write_csv(path, args.rows)
        size = path.stat().st_size / 2**20
        print(f"{path.name}: {args.rows} rows, 20 columns + label, {size:.0f} MB", flush=True)
        times = child(TIMES, path, args.rounds)
        memory = child(MEMORY, path)
    print(f"\nstages of the last load ({times['features']} features):")
    for stage, seconds in sorted(times["stages"].items(), key=lambda kv: -kv[1]):
        print(f"  {stage:<14} {seconds:6.2f} s")
    b, m = statistics.median(times["pyarrow"]), statistics.median(times["mlkit"])
    ratio = m / b
    print(f"\npyarrow.csv.read_csv   median {b:6.2f} s")
    print(f"mlkit.data.load        median {m:6.2f} s")
    print(
        f"ratio load / read: {ratio:.2f}x (target <= {TARGET_TIME:g}x: "
        f"{'met' if ratio <= TARGET_TIME else 'NOT met'})"
    )
    peak = memory["peak_mb"] / memory["array_mb"]
    print(
        f"peak memory of the load: {peak:.2f}x its float32 arrays ({memory['array_mb']:.0f} MB) "
        f"(target <= {TARGET_MEMORY:g}x: {'met' if peak <= TARGET_MEMORY else 'NOT met'})"
    )
    return 0 if ratio <= TARGET_TIME and peak <= TARGET_MEMORY else 1


if __name__ == "__main__":
    sys.exit(main())
