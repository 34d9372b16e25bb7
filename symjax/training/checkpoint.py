"""The files of one seed's training run, and its orbax checkpoints.

A run directory holds:

- ``config.json``: the :class:`~symjax.training.config.TrainConfig` of the run with
  this directory's ``seed`` and the ``input_shape`` ``[H, W, C]``;
- ``metrics.jsonl``: one JSON object per line, ``{"kind": "train", ...}`` every
  few steps and ``{"kind": "eval", ...}`` after every epoch;
- ``checkpoints/<epoch>/``: the full training state (parameters, batch statistics,
  optimiser state, step) after that many epochs, the two latest kept;
- ``best/<epoch>/``: parameters and batch statistics of the epoch with the best
  validation accuracy so far;
- ``done.json``: written last, with the chosen epoch and its accuracies.

A run restarted after a kill restores the latest epoch every seed of the group
reached, drops the metric records written after it, and continues; because the
data order and the augmentation depend only on the seed, the epoch and the step,
it ends with the weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
DONE_FILE = "done.json"


def _manager(directory: Path, max_to_keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
    )
    # orbax (tensorstore) writes only to absolute paths.
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def _as_saveable(tree):
    """numpy arrays (orbax rejects numpy scalars) of a host pytree."""
    return jax.tree.map(np.asarray, tree)


def _save(manager: ocp.CheckpointManager, step: int, tree) -> None:
    """Saves ``tree`` as ``step``, replacing a checkpoint of that step left by an
    interrupted run (it holds the same values, recomputed)."""
    if step in manager.all_steps():
        manager.delete(step)
    manager.save(step, args=ocp.args.StandardSave(_as_saveable(tree)))


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Writes ``payload`` atomically (a temporary file renamed over ``path``)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


class RunDirectory:
    """The directory of one seed's run (see the module docstring).

    Args:
      path: the directory; created on first write.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._checkpoints = None
        self._best = None

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    # Records.

    def read_config(self) -> dict[str, Any] | None:
        """The stored configuration, or None before the first write."""
        path = self.path / CONFIG_FILE
        return json.loads(path.read_text()) if path.exists() else None

    def write_config(self, config: Mapping[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_json(self.path / CONFIG_FILE, config)

    def read_done(self) -> dict[str, Any] | None:
        """The final record, or None while the run is unfinished."""
        path = self.path / DONE_FILE
        return json.loads(path.read_text()) if path.exists() else None

    def write_done(self, record: Mapping[str, Any]) -> None:
        _write_json(self.path / DONE_FILE, record)

    @property
    def done(self) -> bool:
        return (self.path / DONE_FILE).exists()

    def append_metrics(self, records: Iterable[Mapping[str, Any]]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / METRICS_FILE, "a") as f:
            for record in records:
                f.write(json.dumps(record, sort_keys=True) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """All metric records in the order written."""
        path = self.path / METRICS_FILE
        if not path.exists():
            return []
        text = path.read_text()
        lines = [line for line in text.splitlines() if line]
        if lines and not text.endswith("\n"):
            # A last line cut short by a kill; its epoch is redone on resumption
            # (rewind_metrics rewrites the file without it).
            try:
                json.loads(lines[-1])
            except json.JSONDecodeError:
                lines.pop()
        return [json.loads(line) for line in lines]

    def rewind_metrics(self, epoch: int) -> list[dict[str, Any]]:
        """Drops the records of epochs after ``epoch`` and returns the rest."""
        kept = [r for r in self.read_metrics() if r["epoch"] <= epoch]
        path = self.path / METRICS_FILE
        if path.exists():
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
            os.replace(tmp, path)
        return kept

    # Checkpoints.

    @property
    def checkpoints(self) -> ocp.CheckpointManager:
        if self._checkpoints is None:
            self._checkpoints = _manager(self.path / "checkpoints", max_to_keep=2)
        return self._checkpoints

    @property
    def best(self) -> ocp.CheckpointManager:
        if self._best is None:
            self._best = _manager(self.path / "best", max_to_keep=1)
        return self._best

    def epochs_saved(self) -> list[int]:
        """Epochs with a full training-state checkpoint."""
        if not (self.path / "checkpoints").exists():
            return []
        return sorted(self.checkpoints.all_steps())

    def save_state(self, epoch: int, state) -> None:
        """Saves the training state (a host pytree) reached after ``epoch`` epochs."""
        _save(self.checkpoints, epoch, state)

    def restore_state(self, epoch: int, template):
        """The state saved after ``epoch`` epochs, shaped like ``template``."""
        return self.checkpoints.restore(
            epoch, args=ocp.args.StandardRestore(_as_saveable(template))
        )

    def save_best(self, epoch: int, variables) -> None:
        """Saves the model variables of the best epoch so far."""
        _save(self.best, epoch, variables)

    def restore_best(self, template=None) -> tuple[int, Any]:
        """``(epoch, variables)`` of the best epoch saved.

        Args:
          template: a pytree of arrays or ``jax.ShapeDtypeStruct`` giving the
            structure, or None to restore plain nested dictionaries.
        """
        epoch = self.best.latest_step()
        if epoch is None:
            raise FileNotFoundError(
                f"no best-epoch weights under {self.path / 'best'}; the run has not "
                "finished an epoch."
            )
        if template is None:
            return epoch, self.best.restore(epoch)
        template = jax.tree.map(
            lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else np.asarray(x),
            template,
        )
        return epoch, self.best.restore(epoch, args=ocp.args.StandardRestore(template))

    def close(self) -> None:
        for manager in (self._checkpoints, self._best):
            if manager is not None:
                manager.close()
        self._checkpoints = self._best = None
