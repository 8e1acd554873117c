"""What the driver and the kernel agree on: environment names, record files, the result MIME.

Both sides of a run import this module and nothing else of each other, so a name changed
here changes on both sides at once. The ground floor: it imports nothing of mlkit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# Environment variables the driver sets for the kernel.
ENV_RUN_DIR = "MLKIT_RUN_DIR"
ENV_EXPERIMENT = "MLKIT_EXPERIMENT"
ENV_NOTEBOOK = "MLKIT_NOTEBOOK"
ENV_DEFER_FINISH = "MLKIT_DEFER_FINISH"
ENV_ROOT = "MLKIT_EXPERIMENTS"
ENV_TRIAL = "MLKIT_TRIAL"
# Set by jupyter_server (2 and later) for a session's kernel: the notebook's absolute path.
ENV_JUPYTER_SESSION = "JPY_SESSION_NAME"

# The files of a run record, under experiments/<experiment>/runs/<run-id>/.
RUN_FILE = "run.json"
PARAMS_FILE = "params.json"
LINEAGE_FILE = "lineage.json"
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.jsonl"
OUTPUT_NOTEBOOK = "output.ipynb"
# A run made by hand in a kernel: the code of the cells that ran since start_run.
CELLS_RUN_FILE = "cells_run.py"
PRUNED_FILE = "pruned.json"
WEIGHTS = "model.safetensors"
BUILD = "model.json"
# A run on a table of the user's own: its fitted preprocessing (JSON data, never a pickle),
# and the table's source, content hash, schema and what the checks found.
PREPROCESS_FILE = "preprocess.json"
DATA_FILE = "data.json"
# A bounded sample of the training rows, in the table's own columns: the monitor's reference.
REFERENCE_FILE = "reference.parquet"
TABLE_FILES = (PREPROCESS_FILE, DATA_FILE, REFERENCE_FILE)
# The model registry's folder under experiments/, and the files of a registered model in it.
REGISTRY_DIR = "registry"
REGISTRY_FILE = "registry.json"
CARD_FILE = "card.json"

# The templates shipped beside the package (evaluate, monitor, sweep report).
TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates"

# The notebook displays its result under this MIME type; the driver reads it back.
RESULT_MIME = "application/vnd.mlkit.result+json"


def spec_from_env() -> dict[str, Any] | None:
    """The trial coordinates, without the storage URL (it may hold a password)."""
    raw = os.environ.get(ENV_TRIAL)
    if not raw:
        return None
    spec = json.loads(raw)
    return {"study": spec.get("study"), "trial": spec.get("number")}
