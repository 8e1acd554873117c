"""W&B tracking: one W&B run per execution, a projection of the run record.

The only module that imports wandb. Mode comes from the ``tracking`` argument,
else ``$WANDB_MODE``, else ``offline``: runs are written under the run record and
can be synced later with ``wandb sync``. Set ``WANDB_MODE=online`` with a key to
stream them live. The key travels only through the environment: it is never put
in a config, a record or a notebook.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlkit.errors import ParameterError

MODES = ("offline", "online", "disabled")
DEFAULT_PROJECT = "mlkit"


def resolve_mode(mode: str | None = None) -> str:

    chosen = (mode or os.environ.get("WANDB_MODE") or "offline").lower()
    if chosen == "dryrun":
        chosen = "offline"
    if chosen not in MODES:
        raise ParameterError(
            f"W&B mode must be one of {', '.join(MODES)}, got {chosen!r}. "
            "Set WANDB_MODE=offline (the default) or pass --tracking offline."
        )
    return chosen


class Tracker:
    """A thin handle over ``wandb.Run`` with mlkit's conventions.

    config = the parameters, group = the experiment, job_type = run/trial/report,
    run id = the mlkit run id, files under ``<run dir>/wandb``.
    """

    def __init__(
        self,
        *,
        run_dir: Path,
        run_id: str,
        experiment: str,
        config: dict[str, Any],
        job_type: str = "run",
        mode: str | None = None,
        tags: tuple[str, ...] = (),
        git: dict[str, str] | None = None,
    ) -> None:
        import wandb

        self.mode = resolve_mode(mode)
        self._wandb = wandb
        # W&B's process-wide settings come from the environment, and without WANDB_MODE
        # they say online even for an offline run: its telemetry then starts exporter
        # threads that try to reach the server. The run's mode is made the global one.
        wandb.setup(settings=wandb.Settings(mode=self.mode))
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT),
            dir=str(run_dir),
            id=run_id,
            name=run_id,
            group=experiment,
            job_type=job_type,
            config=config,
            tags=list(tags),
            mode=self.mode,
            reinit="finish_previous",
            settings=wandb.Settings(
                silent=True,
                console="off",  # notebook output stays in the notebook
                x_disable_stats=True,  # a stats thread costs CPU on small machines
                save_code=False,
                # The package list is in lineage.json already; W&B's own scan of every
                # installed package costs about 50 ms per run.
                x_save_requirements=False,
                **(git or {}),  # mlkit.lineage.wandb_git_settings: W&B runs no git itself
            ),
        )
        self.finished = False

    @property
    def path(self) -> str | None:
        """The W&B run's own directory (``.../wandb/offline-run-...``)."""
        if self.mode == "disabled":
            return None
        return str(Path(self.run.dir).parent)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"wandb": {"mode": self.mode, "id": self.run.id, "dir": self.path}}
        if self.mode == "online":
            info["wandb"]["url"] = self.run.url
        return info

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.run.log(metrics, step=step)

    def update_config(self, values: dict[str, Any]) -> None:
        self.run.config.update(values, allow_val_change=True)

    def summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update(values)  # one message to W&B's service, not one a key

    def log_image(self, name: str, path: Path) -> None:
        self.run.log({name: self._wandb.Image(str(path))})

    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Log rows of dicts as a W&B Table (columns: every key, in first-seen order)."""
        if self.mode == "disabled" or not rows:
            return
        columns: list[str] = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)

        def cell(value: Any) -> Any:
            scalar = isinstance(value, int | float | str | bool) or value is None
            return value if scalar else str(value)

        data = [[cell(row.get(c)) for c in columns] for row in rows]
        self.run.log({name: self._wandb.Table(columns=columns, data=data)})

    def log_artifact(
        self, paths: list[Path], *, name: str, type: str, aliases: tuple[str, ...] = ()
    ) -> None:
        if self.mode == "disabled":
            return
        artifact = self._wandb.Artifact(name, type=type)
        for path in paths:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact, aliases=list(aliases) or None)

    def finish(self, exit_code: int = 0) -> None:
        if not self.finished:
            self.finished = True
            self.run.finish(exit_code=exit_code)
