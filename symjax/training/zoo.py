"""A model zoo on disk: many trained seeds of each architecture.

Layout::

    <root>/<name>/seed_<k>/      one run directory per seed
        config.json  metrics.jsonl  done.json  checkpoints/  best/

where ``<name>`` is :attr:`TrainConfig.run_name` (for example
``myrtle_width16``). A member is finished once ``done.json`` exists; its weights
are those of the epoch with the best validation accuracy (``best/``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from symjax.data import Splits
from symjax.training.checkpoint import RunDirectory
from symjax.training.config import TrainConfig

logger = logging.getLogger(__name__)

_SEED_DIR = re.compile(r"seed_(\d+)")


def member_dir(root: str | os.PathLike, name: str, seed: int) -> Path:
    """The run directory of seed ``seed`` of architecture ``name``."""
    return Path(root) / name / f"seed_{int(seed)}"


def list_zoo(directory: str | os.PathLike) -> list[Path]:
    """Finished members under ``directory``.

    Args:
      directory: a zoo root, one architecture's directory, or a member itself.

    Returns:
      The member directories holding ``done.json``, ordered by architecture name
      and then by seed.
    """
    directory = Path(directory)
    if (directory / "done.json").exists():
        return [directory]
    found = list(directory.glob("seed_*/done.json"))
    found += list(directory.glob("*/seed_*/done.json"))
    members = [p.parent for p in found if _SEED_DIR.fullmatch(p.parent.name)]
    return sorted(
        members,
        key=lambda m: (m.parent.name, int(_SEED_DIR.fullmatch(m.name).group(1))),
    )


def load_zoo_member(path: str | os.PathLike) -> tuple[Any, dict[str, Any], dict]:
    """A finished member's model, chosen-epoch variables and record.

    Args:
      path: the member's run directory (see :func:`list_zoo`).

    Returns:
      ``(model, variables, info)``: the unbound Flax module built by
      ``symjax.models.get_model``; its variables ``{"params", "batch_stats"}`` as
      host arrays (``batch_stats`` only when the model has one); and ``done.json``
      with ``"config"`` (the training configuration) and ``"path"`` added.
    """
    from symjax.models import get_model

    run = RunDirectory(path)
    config, done = run.read_config(), run.read_done()
    if config is None or done is None:
        raise FileNotFoundError(
            f"{path} is not a finished zoo member (no config.json or done.json); "
            "finish it with experiments/train_zoo.py or pick one from list_zoo()."
        )
    model = get_model(config["arch"], **config["model"])
    x = jnp.zeros((1,) + tuple(config["input_shape"]), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    template = {
        "params": shapes["params"],
        "batch_stats": shapes.get("batch_stats", {}),
    }
    template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
    epoch, variables = run.restore_best(template)
    run.close()
    if epoch != done["best_epoch"]:
        raise ValueError(
            f"{path}: best/ holds epoch {epoch} but done.json chose epoch "
            f"{done['best_epoch']}; the directory was modified after training."
        )
    if not variables["batch_stats"]:
        variables = {"params": variables["params"]}
    return model, variables, dict(done, config=config, path=str(path))


def train_zoo(
    config: TrainConfig,
    splits: Splits,
    root: str | os.PathLike,
    *,
    group_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Trains the unfinished seeds of ``config`` into ``root``.

    Finished members of the same configuration are skipped; unfinished ones resume
    from their checkpoints.

    Args:
      config: the configuration; ``config.seeds`` are the members.
      splits: the data.
      root: the zoo root.
      group_size: seeds trained together (vmapped) at most; None for all.
      mesh: device mesh (see :func:`symjax.training.train.fit`).
      progress: show progress bars.

    Returns:
      The ``done.json`` records of all seeds of ``config``.
    """
    from symjax.models import get_model
    from symjax.training.train import fit

    config = config.resolved()
    dirs = {s: member_dir(root, config.run_name, s) for s in config.seeds}
    todo = []
    for seed, path in dirs.items():
        run = RunDirectory(path)
        if not run.done:
            todo.append(seed)
            continue
        stored = dict(run.read_config())
        stored.pop("seed"), stored.pop("input_shape")
        if not TrainConfig.from_dict(stored).same_run(config):
            raise ValueError(
                f"{path} holds a finished run of another configuration; choose "
                "another zoo directory or delete that one."
            )
    logger.info(
        "%s: %d of %d seeds to train", config.run_name, len(todo), len(config.seeds)
    )
    model = get_model(config.arch, **config.model)
    size = len(todo) if group_size is None else int(group_size)
    for start in range(0, len(todo), max(size, 1)):
        group = tuple(todo[start : start + size])
        fit(
            model,
            dataclasses.replace(config, seeds=group),
            splits,
            workdirs=[dirs[s] for s in group],
            mesh=mesh,
            progress=progress,
        )
    return [RunDirectory(dirs[s]).read_done() for s in config.seeds]
