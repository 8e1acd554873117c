"""How much `mlkit.data.load` of a user's CSV costs against pyarrow reading the same file.

One invocation writes a seeded CSV (default 1,000,000 rows, 20 columns of mixed types: 11
numbers, some with gaps, 5 categories, some with gaps, 2 dates, a boolean and an id) and the
label, then alternates, each in a fresh child process so memory is measured alone:

- the baseline, ``pyarrow.csv.read_csv`` of the file;
- ``mlkit.data.load(path, target="label")``: read, canonical types, the checks, the split,
  the preprocessing fitted on train and applied to every row, the content hash.

Prints the median wall time of each and their ratio (target: load at most 3x the read),
the time of each stage of the load, and the load's peak memory above the interpreter's
against the size of the float32 arrays it returns (target: at most 4x).

Each child first touches and frees ``--ballast-mb`` (1536 by default) of memory, then resets
its peak: on some virtual machines the host backs guest memory only when it is first
touched, about 3 s/GB, more than the work itself, and which child found backed pages was
chance. Both arms get the same; the benchmark prints the cost it saw, and ``--ballast-mb 0``
times them without it.

    python benchmarks/data_load.py [--rows 1000000] [--rounds 3] [--keep PATH] [--ballast-mb N]
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

CHILD = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
kind, path = sys.argv[1], sys.argv[2]
import numpy as np, pyarrow as pa, pyarrow.csv
if kind == "mlkit":
    import mlkit.data, mlkit.table_data, mlkit.tables, mlkit.preprocess, mlkit.table_checks
    import sklearn.model_selection
def status_mb(field):
    with open("/proc/self/status") as fh:
        line = next(line for line in fh if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024
ballast_mb = int(sys.argv[3])
touched = time.perf_counter()
if ballast_mb:
    # Touched and let go: the timed work below finds backed memory, as on most machines.
    ballast = np.ones(ballast_mb * 2**20 // 8)
    del ballast
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # the peak (VmHWM) starts again from here
touched = time.perf_counter() - touched
before = status_mb("VmRSS")
start = time.perf_counter()
out = {}
if kind == "pyarrow":
    table = pyarrow.csv.read_csv(path)
    out["rows"] = table.num_rows
else:
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
    wrap(mlkit.tables, "table_hash")
    wrap(mlkit.table_checks, "check_table")
    wrap(mlkit.preprocess.Preprocessor, "fit", static=True)
    wrap(mlkit.preprocess.Preprocessor, "transform")
    wrap(mlkit.preprocess.Preprocessor, "encode_target")
    ds = mlkit.data.load(path, target="label")
    out["stages"] = stages
    out["array_mb"] = sum(s.X.nbytes + s.y.nbytes for s in (ds.train, ds.val, ds.test)) / 2**20
    out["features"] = len(ds.feature_names)
out["seconds"] = time.perf_counter() - start
out["peak_mb"] = status_mb("VmHWM") - before
out["ballast_s_per_gb"] = touched / max(ballast_mb, 1) * 1024
print(json.dumps(out))
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


def child(kind: str, path: Path, ballast_mb: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(path), str(ballast_mb)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"{kind} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="write the CSV here and keep it")
    parser.add_argument(
        "--ballast-mb",
        type=int,
        default=1536,
        help="memory each child touches and frees before it is timed (0: none)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlkit-bench-data-") as tmp:
        path = args.keep or Path(tmp) / "table.csv"
        write_csv(path, args.rows)
        size = path.stat().st_size / 2**20
        print(f"{path.name}: {args.rows} rows, 20 columns + label, {size:.0f} MB", flush=True)
        base, load = [], []
        for r in range(args.rounds):
            base.append(child("pyarrow", path, args.ballast_mb))
            load.append(child("mlkit", path, args.ballast_mb))
            print(
                f"round {r + 1}: pyarrow {base[-1]['seconds']:.2f} s, "
                f"mlkit.data.load {load[-1]['seconds']:.2f} s",
                flush=True,
            )
    b = statistics.median(x["seconds"] for x in base)
    m = statistics.median(x["seconds"] for x in load)
    last = load[-1]
    print(f"\nstages of the last load ({last['features']} features):")
    for stage, seconds in sorted(last["stages"].items(), key=lambda kv: -kv[1]):
        print(f"  {stage:<14} {seconds:6.2f} s")
    ratio = m / b
    if args.ballast_mb:
        touch = statistics.median(x["ballast_s_per_gb"] for x in base + load)
        print(
            f"\nfirst touch of fresh memory on this machine: {touch:.2f} s/GB (each child "
            f"touched and freed {args.ballast_mb} MB before it was timed)"
        )
    memory = statistics.median(x["peak_mb"] for x in load) / last["array_mb"]
    print(f"\npyarrow.csv.read_csv   median {b:6.2f} s")
    print(f"mlkit.data.load        median {m:6.2f} s")
    print(
        f"ratio load / read: {ratio:.2f}x (target <= {TARGET_TIME:g}x: "
        f"{'met' if ratio <= TARGET_TIME else 'NOT met'})"
    )
    print(
        f"peak memory of the load: {memory:.2f}x its float32 arrays ({last['array_mb']:.0f} MB) "
        f"(target <= {TARGET_MEMORY:g}x: {'met' if memory <= TARGET_MEMORY else 'NOT met'})"
    )
    return 0 if ratio <= TARGET_TIME and memory <= TARGET_MEMORY else 1


if __name__ == "__main__":
    sys.exit(main())
