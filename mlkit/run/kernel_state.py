"""Inside a warm kernel: remember the clean state once, restore it before every run.

A reused kernel keeps what a run leaves behind unless something puts it back.
``scrub`` clears it as soon as a run ends, ``reset`` gives the next run its
environment, working directory and seeds (and scrubs first if nothing did). What
is restored before each run: the user namespace (IPython ``reset``), the
working directory, environment variables, ``sys.path``, user modules (anything
imported from outside the Python installation is dropped from ``sys.modules``, so
module-level values start fresh), torch's default dtype, thread count and grad
mode, every RNG (random, numpy, torch), warnings filters, root logger handlers and
level, scikit-learn's global config, matplotlib figures and rcParams, and the last
traceback (which can hold a large tensor alive). W&B, which reads its ``WANDB_*``
environment once per process, is set up again when a run's differs.

What it cannot restore, and so reports for the kernel to be retired: a thread the
run started that is still running, and an unfinished ``wandb.run``. State kept
inside third-party modules that were already imported (caches, registries,
monkeypatches) is not isolated; use the papermill engine for a fresh kernel when
that matters.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
import sys
import sysconfig
import threading
import warnings
from typing import Any

_BASE: dict[str, Any] = {}
_LIBRARY: dict[str, Any] = {}  # modules imported by runs since warm-up, checked: not user code
_SCRUBBED = False  # scrub() ran since the last reset()
_INSTALL_DIRS = tuple(
    {
        os.path.realpath(p)
        for p in (
            sysconfig.get_paths()["stdlib"],
            sysconfig.get_paths()["purelib"],
            sysconfig.get_paths()["platlib"],
        )
        if p
    }
)


def warm(imports: list[str]) -> dict[str, Any]:
    """Import the heavy modules, then record the clean state to return to."""
    timings = {}
    import time

    service = _start_wandb_service() if "wandb" in imports else None
    for name in imports:
        start = time.perf_counter()
        try:
            __import__(name)
        except ImportError:
            continue  # an optional module of the default list; warm what exists
        timings[name] = round(time.perf_counter() - start, 3)
    if "torch" in sys.modules:
        import torch

        # The first optimizer step imports torch._dynamo (about 2 s): pay it here, once.
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([p], lr=0.1)
        p.sum().backward()
        opt.step()
    if service is not None:
        service.join()
    _quiet_kernel_log()
    _BASE.clear()
    _BASE.update(_snapshot())
    # Warm objects leave the GC's tracked set: IPython's reset gets fast. No collection
    # first: imports leave next to no garbage (15 of 450,000 objects measured) and a
    # full collection here cost 0.2 s of every kernel's warm-up.
    gc.freeze()
    return timings


def _start_wandb_service() -> threading.Thread | None:
    """Set W&B up on a thread while the other modules import.

    The first ``wandb.init`` of a process starts W&B's service, a separate process that
    then boots on the other core instead of in the first run (about 0.5 s of its first
    cell). W&B reads its ``WANDB_*`` variables here; the pool starts kernels with the
    W&B mode runs get by default, and a run whose variables differ sets W&B up again
    (``reset``).
    """
    try:
        import wandb
    except ImportError:
        return None

    def setup() -> None:
        with contextlib.suppress(Exception):  # the run's wandb.init tries again and reports
            wandb.setup()

    thread = threading.Thread(target=setup, name="mlkit-wandb-setup", daemon=True)
    thread.start()
    return thread


def _quiet_kernel_log() -> None:
    """Raise ipykernel's logger to its handlers' level.

    traitlets leaves the logger at DEBUG and filters in the handler, so every message
    the kernel handles builds and drops a few debug records: about 1 ms of a cell that
    does nothing. Records no handler would print are not built any more.
    """
    ip = _ipython()
    log = getattr(getattr(ip, "kernel", None), "log", None)
    if not isinstance(log, logging.Logger) or log.propagate or not log.handlers:
        return
    lowest = min(handler.level for handler in log.handlers)
    if lowest > log.level:
        log.setLevel(lowest)


def _snapshot() -> dict[str, Any]:
    snap: dict[str, Any] = {
        "modules": set(sys.modules),
        "path": list(sys.path),
        "warnings": list(warnings.filters),
        "log_handlers": list(logging.root.handlers),
        "log_level": logging.root.level,
        "threads": {t.ident for t in threading.enumerate()},
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        snap["dtype"] = torch.get_default_dtype()
        snap["torch_threads"] = torch.get_num_threads()
    sklearn = sys.modules.get("sklearn")
    if sklearn is not None:
        snap["sklearn"] = dict(sklearn.get_config())
    mpl = sys.modules.get("matplotlib")
    if mpl is not None:
        snap["rc"] = mpl.rcParams.copy()
    ip = _ipython()
    if ip is not None:
        snap["events"] = {name: list(cbs) for name, cbs in ip.events.callbacks.items()}
    return snap


def _is_user_module(module: Any) -> bool:
    path = getattr(module, "__file__", None)
    if not path:
        return False
    real = os.path.realpath(path)
    return not real.startswith(_INSTALL_DIRS)


def scrub() -> None:
    """Clear what the last run left behind; needs nothing from the next run.

    The pool sends it as soon as a run ends, so it overlaps the driver's record keeping
    and the next trial's set-up; ``reset`` runs it itself when nothing did.
    """
    global _SCRUBBED
    # What the run left outside its namespace goes first, so the collection below frees
    # it: the last traceback (it can hold a large tensor), open figures, mlkit's handles.
    for attr in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(sys, attr):
            setattr(sys, attr, None)
    mpl = sys.modules.get("matplotlib")
    if mpl is not None and "rc" in _BASE:
        import matplotlib.pyplot as plt

        plt.close("all")
        mpl.rcParams.update(_BASE["rc"])
    record = sys.modules.get("mlkit.record")
    if record is not None:
        record._ACTIVE = None
    trial = sys.modules.get("mlkit.trial")
    if trial is not None:
        trial._CURRENT = None
    kept = _drop_user_modules()
    ip = _ipython()
    if ip is not None:
        ip.reset(new_session=False, aggressive=False)
        for event, callbacks in _BASE.get("events", {}).items():
            ip.events.callbacks[event][:] = callbacks  # hooks a run registered go
    if kept:
        # The run imported libraries that stay loaded (the first run of a kernel, mostly):
        # move them out of the GC's tracked set like the warm imports, or every later
        # collection (IPython's reset makes one) walks them again: 70 ms a run measured.
        gc.collect()
        gc.freeze()
    sys.path[:] = _BASE.get("path", sys.path)
    warnings.filters[:] = _BASE.get("warnings", warnings.filters)
    warnings._filters_mutated() if hasattr(warnings, "_filters_mutated") else None
    logging.root.handlers[:] = _BASE.get("log_handlers", logging.root.handlers)
    logging.root.setLevel(_BASE.get("log_level", logging.WARNING))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_default_dtype(_BASE["dtype"])
        torch.set_num_threads(_BASE["torch_threads"])
        torch.set_grad_enabled(True)
        torch.use_deterministic_algorithms(False)
    sklearn = sys.modules.get("sklearn")
    if sklearn is not None and "sklearn" in _BASE:
        sklearn.set_config(**_BASE["sklearn"])
    _SCRUBBED = True


def reset(env: dict[str, str], cwd: str | None, seed: int = 0) -> None:
    """Put the kernel back to the clean state and give it the next run's env and cwd."""
    global _SCRUBBED
    if not _SCRUBBED:
        scrub()
    _SCRUBBED = False  # the run starts: the next reset scrubs unless the pool did
    os.environ.clear()
    os.environ.update(env)
    _renew_wandb_if_its_env_changed()
    if cwd:
        os.chdir(cwd)
    random.seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def _renew_wandb_if_its_env_changed() -> None:
    """Tear W&B down when this run's ``WANDB_*`` variables differ from the ones it read.

    W&B reads its environment once per process, when it is first set up, and then
    ignores changes (it says so and keeps the old entity, notes, tags, mode...). The
    next ``wandb.init`` sets it up again from this run's environment. Runs of one
    sweep share their environment, so this costs nothing there.
    """
    setup = sys.modules.get("wandb.sdk.wandb_setup")
    singleton = getattr(setup, "_singleton", None)
    changed = getattr(singleton, "did_environment_change", None)
    if changed is not None and changed():
        import wandb

        wandb.teardown()


def _drop_user_modules() -> bool:
    """Drop modules a run imported from outside the Python installation (its own code).

    Returns whether the run left library modules loaded that no earlier reset had seen.
    Only modules imported since warm-up can be the run's, and a library module seen
    once is remembered (by identity) rather than checked again: a realpath for each of
    the ~1,300 modules the template's first run imports cost 60 ms per reset.
    """
    base_modules = _BASE.get("modules", set())
    new_library = False
    for name in [n for n in sys.modules if n not in base_modules]:
        module = sys.modules.get(name)
        if module is None or _LIBRARY.get(name) is module:
            continue
        if _is_user_module(module) and not name.startswith("mlkit"):
            del sys.modules[name]
        else:
            _LIBRARY[name] = module
            new_library = True
    return new_library


def leftovers() -> list[str]:
    """What the last run left that ``reset`` cannot undo: reasons to retire the kernel."""
    reasons = []
    base = _BASE.get("threads", set())
    extra = [t for t in threading.enumerate() if t.ident not in base and t.is_alive()]
    user = [t for t in extra if not _is_library_thread(t)]
    if user:
        reasons.append("threads still running: " + ", ".join(t.name for t in user[:5]))
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        reasons.append("an unfinished wandb.run")
    return reasons


def _is_library_thread(thread: threading.Thread) -> bool:
    """Threads W&B, ZMQ and IPython keep for themselves are not the run's doing.

    W&B's telemetry (OpenTelemetry exporters) starts its threads at a run's first
    ``run.log`` when W&B is not offline, and keeps them for the process.
    """
    target = getattr(thread, "_target", None)
    module = getattr(target, "__module__", "") or type(thread).__module__ or ""
    return thread.daemon and module.split(".")[0] in {
        "wandb",
        "zmq",
        "ipykernel",
        "IPython",
        "tornado",
        "asyncio",
        "concurrent",
        "jupyter_client",
        "opentelemetry",
        "tqdm",
        "threading",
    }


def _ipython() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()
