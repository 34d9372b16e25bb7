"""Training ``K`` models at once: one per seed, stacked, vmapped and sharded.

The state of every model carries a leading seed axis ``[K, ...]``. One training
step is ``jit(vmap(per-seed step))`` applied to a data batch
``[K, B, H, W, C]`` in which seed ``k`` sees its own examples, in the order
``epoch_permutation(seed_k, epoch, n)``, augmented with the key
``fold_in(fold_in(key(seed_k), 1), step)``; its initialisation key is
``fold_in(key(seed_k), 0)``. Everything a seed's run does is therefore a function
of its seed, the epoch and the step, whichever other seeds it is trained with, and
a run resumed from a checkpoint repeats exactly what an uninterrupted run does.

The seed axis is split over a device mesh (:mod:`symjax.training.parallel`), and
both the training step and the evaluation step compile once.

Selection happens on the validation split only: after every epoch both the
validation and the test split are evaluated and logged, the epoch with the best
validation accuracy is kept, and the test accuracy is only reported.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from symjax.data import (
    MEAN,
    STD,
    ArrayDataset,
    Splits,
    augment,
    epoch_permutation,
    standardize,
)
from symjax.nn.conv import use_conv_impl
from symjax.training import parallel
from symjax.training.checkpoint import RunDirectory
from symjax.training.config import TrainConfig
from symjax.training.recipes import get_recipe, learning_rate_schedule, make_optimizer

logger = logging.getLogger(__name__)

Array = jax.Array

INIT_STREAM = 0
"""``fold_in`` index of the initialisation key of a seed."""
AUGMENT_STREAM = 1
"""``fold_in`` index of the augmentation keys of a seed (then folded with the step)."""


class TrainState(NamedTuple):
    """The training state of one model, or of ``K`` stacked along axis 0.

    Attributes:
      params: the model's ``params`` collection.
      batch_stats: its ``batch_stats`` collection (``{}`` without BatchNorm).
      opt_state: the optimiser state.
      step: ``int32 []`` optimiser steps taken (``[K]`` stacked).
      seed: ``int32 []`` the seed (``[K]`` stacked).
    """

    params: Any
    batch_stats: Any
    opt_state: Any
    step: Array
    seed: Array

    @property
    def variables(self) -> dict[str, Any]:
        """The variables ``model.apply`` takes."""
        if self.batch_stats:
            return {"params": self.params, "batch_stats": self.batch_stats}
        return {"params": self.params}


def seed_key(seed, stream: int) -> Array:
    """The key of random stream ``stream`` of seed ``seed`` (an int or int array)."""
    return jax.random.fold_in(jax.random.key(seed), stream)


def init_state(
    model, tx: optax.GradientTransformation, seed, input_shape
) -> TrainState:
    """The initial state of one model.

    Args:
      model: a Flax module with the ``symjax.models`` interface.
      tx: the optimiser.
      seed: ``int32 []`` seed (may be traced).
      input_shape: ``(H, W, C)`` of one input.
    """
    x = jnp.zeros((1,) + tuple(input_shape), jnp.float32)
    variables = model.init(seed_key(seed, INIT_STREAM), x, train=False)
    params = variables["params"]
    return TrainState(
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        step=jnp.zeros((), jnp.int32),
        seed=jnp.asarray(seed, jnp.int32),
    )


def create_states(
    model, tx, seeds: Sequence[int], input_shape, mesh: jax.sharding.Mesh
) -> TrainState:
    """Initial states of the models of ``seeds``, stacked ``[K, ...]`` and split
    over ``mesh``.

    Each seed is initialised by one jitted function of a traced seed (compiled
    once), which compiles about twice as fast on the CPU as its ``vmap`` and
    gives the same values.
    """
    init = jax.jit(functools.partial(init_state, model, tx, input_shape=input_shape))
    states = [jax.device_get(init(np.int32(seed))) for seed in seeds]
    return parallel.put_stacked(_stack(states), mesh)


def train_step(
    state: TrainState,
    images: Array,
    labels: Array,
    *,
    model,
    tx: optax.GradientTransformation,
    pad: int,
    flip: bool,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    conv_impl: str,
) -> tuple[TrainState, dict[str, Array]]:
    """One optimiser step of one model on its batch.

    Args:
      state: the model's state.
      images: ``[B, H, W, C]`` ``uint8`` batch, augmented here.
      labels: ``[B]`` ``int32`` classes.
      model, tx: the model and the optimiser.
      pad, flip: augmentation (:func:`symjax.data.augment`).
      mean, std: per-channel standardisation of the images scaled to ``[0, 1]``.
      conv_impl: convolution implementation (:mod:`symjax.nn.conv`).

    Returns:
      ``(state, metrics)``: the new state and the batch's mean cross-entropy
      ``"loss"`` and ``"accuracy"`` (before the update).
    """
    key = jax.random.fold_in(seed_key(state.seed, AUGMENT_STREAM), state.step)
    x = standardize(augment(key, images, pad=pad, flip=flip), mean, std)

    def loss_fn(params):
        variables = state._replace(params=params).variables
        with use_conv_impl(conv_impl):
            logits, updates = model.apply(
                variables, x, train=True, mutable=["batch_stats"]
            )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return loss.mean(), (logits, updates)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (logits, updates)), grads = grad_fn(state.params)
    steps, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = TrainState(
        params=optax.apply_updates(state.params, steps),
        batch_stats=updates.get("batch_stats", state.batch_stats),
        opt_state=opt_state,
        step=state.step + 1,
        seed=state.seed,
    )
    accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
    return new_state, {"loss": loss, "accuracy": accuracy}


def make_train_step(
    model,
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    *,
    pad: int,
    flip: bool = True,
    mean=MEAN,
    std=STD,
    conv_impl: str = "auto",
) -> Callable[[TrainState, Array, Array], tuple[TrainState, dict[str, Array]]]:
    """``jit(vmap(train_step))`` over the seed axis, split over ``mesh``.

    The returned function maps ``(state [K, ...], images [K, B, H, W, C] uint8,
    labels [K, B] int32)`` to ``(state, {"loss": [K], "accuracy": [K]})``; the
    input state's buffers are donated.
    """
    per_seed = functools.partial(
        train_step,
        model=model,
        tx=tx,
        pad=int(pad),
        flip=bool(flip),
        mean=tuple(float(m) for m in np.asarray(mean)),
        std=tuple(float(s) for s in np.asarray(std)),
        conv_impl=conv_impl,
    )
    sharding = parallel.seed_sharding(mesh)
    return jax.jit(
        jax.vmap(per_seed),
        in_shardings=(sharding, sharding, sharding),
        out_shardings=(sharding, sharding),
        donate_argnums=0,
    )


def make_eval_step(
    model,
    mesh: jax.sharding.Mesh,
    *,
    mean=MEAN,
    std=STD,
    conv_impl: str = "auto",
) -> Callable[..., tuple[Array, Array]]:
    """The summed loss and number of correct predictions of every model on a batch.

    The returned function maps ``(params [K, ...], batch_stats [K, ...],
    images [B, H, W, C] uint8, labels [B] int32, weights [B] float32)`` to
    ``(loss_sum [K], correct [K])``, each example counted with its weight (0 for
    padding). BatchNorm uses its running averages.
    """
    mean = tuple(float(m) for m in np.asarray(mean))
    std = tuple(float(s) for s in np.asarray(std))

    def per_seed(params, batch_stats, images, labels, weights):
        state = TrainState(params, batch_stats, None, None, None)
        x = standardize(images, mean, std)
        with use_conv_impl(conv_impl):
            logits = model.apply(state.variables, x, train=False)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        return jnp.sum(loss * weights), jnp.sum(correct * weights)

    stacked = parallel.seed_sharding(mesh)
    shared = parallel.replicated(mesh)
    return jax.jit(
        jax.vmap(per_seed, in_axes=(0, 0, None, None, None)),
        in_shardings=(stacked, stacked, shared, shared, shared),
        out_shardings=stacked,
    )


def evaluate(
    eval_step, variables, dataset: ArrayDataset, batch_size: int, mesh
) -> dict[str, np.ndarray]:
    """Mean loss and accuracy of every model on ``dataset``.

    Args:
      eval_step: from :func:`make_eval_step`.
      variables: ``{"params", "batch_stats"}`` stacked ``[K, ...]``
        (``batch_stats`` may be ``{}``), e.g. ``state_variables(state)``.
      dataset: the examples.
      batch_size: examples per step; the last batch is padded to it with
        zero-weight examples, so the step compiles once.
      mesh: the mesh of ``eval_step``.

    Returns:
      ``{"loss": [K], "accuracy": [K]}`` host arrays (NaN for an empty dataset).
    """
    n = len(dataset)
    k = int(jax.tree.leaves(variables["params"])[0].shape[0])
    if n == 0:
        return {"loss": np.full(k, np.nan), "accuracy": np.full(k, np.nan)}
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    loss_sum, correct = np.zeros(k), np.zeros(k)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        images = np.zeros((batch_size,) + dataset.images.shape[1:], np.uint8)
        labels = np.zeros((batch_size,), np.int32)
        weights = np.zeros((batch_size,), np.float32)
        images[: stop - start] = dataset.images[start:stop]
        labels[: stop - start] = dataset.labels[start:stop]
        weights[: stop - start] = 1.0
        batch = parallel.put_replicated((images, labels, weights), mesh)
        sums = parallel.to_host(eval_step(params, batch_stats, *batch))
        loss_sum += sums[0]
        correct += sums[1]
    return {"loss": loss_sum / n, "accuracy": correct / n}


def epoch_batches(
    dataset: ArrayDataset, seeds: Sequence[int], epoch: int, batch_size: int
):
    """Per-seed shuffled batches of one epoch.

    Yields ``(images [K, B, H, W, C] uint8, labels [K, B] int32)`` for each of the
    ``len(dataset) // batch_size`` full batches; seed ``k``'s examples follow
    ``epoch_permutation(seeds[k], epoch, n)`` and the last partial batch is dropped.
    """
    n = len(dataset)
    steps = n // batch_size
    order = np.stack([epoch_permutation(int(s), epoch, n) for s in seeds])
    order = order[:, : steps * batch_size].reshape(len(seeds), steps, batch_size)
    for b in range(steps):
        index = order[:, b]
        yield dataset.images[index], dataset.labels[index]


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
      state: the final stacked state ``[K, ...]`` of the seeds asked for (device
        arrays; padding seeds removed).
      best_variables: host variables ``[K, ...]`` of each seed's chosen epoch.
      records: per seed, the ``done.json`` record (chosen epoch, accuracies).
      history: per seed, every metric record (``metrics.jsonl``).
    """

    state: TrainState
    best_variables: dict[str, Any]
    records: list[dict[str, Any]]
    history: list[list[dict[str, Any]]]


def steps_per_epoch(config: TrainConfig, n_train: int) -> int:
    """Full batches in one epoch of ``n_train`` examples."""
    config = config.resolved()
    steps = n_train // config.batch_size
    if steps < 1:
        raise ValueError(
            f"the training split has {n_train} examples, fewer than one batch of "
            f"{config.batch_size}; lower batch_size or raise train_size."
        )
    return steps


def _host_seed(tree, k: int):
    return jax.tree.map(lambda x: np.asarray(x[k]), tree)


def _stack(trees):
    return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def state_variables(state: TrainState) -> dict[str, Any]:
    """``{"params", "batch_stats"}`` of a state (``batch_stats`` kept even when
    empty, so that every seed's tree has one structure)."""
    return {"params": state.params, "batch_stats": state.batch_stats}


class _Logbook:
    """Metric records of every seed: kept in memory and appended to the runs'
    ``metrics.jsonl`` files."""

    def __init__(self, runs: list[RunDirectory] | None, n_real: int):
        self.runs = runs
        if runs is None:
            self.history = [[] for _ in range(n_real)]
        else:
            self.history = [run.read_metrics() for run in runs]

    def write(self, records: list[dict[str, Any]]) -> None:
        for k, record in enumerate(records):
            self.history[k].append(record)
            if self.runs is not None and parallel.is_primary():
                self.runs[k].append_metrics([record])

    def evals(self, k: int) -> dict[int, dict[str, Any]]:
        """Seed ``k``'s evaluation records by epoch."""
        return {r["epoch"]: r for r in self.history[k] if r["kind"] == "eval"}


class _Selection:
    """Each seed's best epoch so far by validation accuracy, and its variables.

    Without a validation split every epoch beats the previous one, so the last
    epoch is kept.
    """

    def __init__(self, logbook: _Logbook, runs, template, has_val: bool):
        n_real = len(logbook.history)
        self.has_val = has_val
        self.score = np.full(n_real, -np.inf)
        self.epoch = np.zeros(n_real, np.int64)
        self.variables = [None] * n_real
        for k in range(n_real):
            for epoch, record in sorted(logbook.evals(k).items()):
                self._consider(k, epoch, record)
            if self.epoch[k] > 0:
                self.variables[k] = runs[k].restore_best(template)[1]

    def _consider(self, k: int, epoch: int, record) -> bool:
        score = record["val_accuracy"] if self.has_val else epoch
        if score > self.score[k]:
            self.score[k], self.epoch[k] = score, epoch
            return True
        return False

    def update(self, epoch: int, records, variables, runs) -> None:
        """Considers ``epoch`` for every seed; saves the variables that win."""
        for k, record in enumerate(records):
            if self._consider(k, epoch, record):
                self.variables[k] = _host_seed(variables, k)
                if runs is not None and parallel.is_primary():
                    runs[k].save_best(epoch, self.variables[k])


def _open_runs(workdirs, config: TrainConfig, input_shape, n_real: int):
    if len(workdirs) != n_real:
        raise ValueError(
            f"workdirs must give one directory per seed ({n_real}), got "
            f"{len(workdirs)}."
        )
    runs = [RunDirectory(w) for w in workdirs]
    for run, seed in zip(runs, config.seeds, strict=True):
        _claim(run, config, seed, input_shape)
    return runs


def _claim(run: RunDirectory, config: TrainConfig, seed: int, input_shape) -> None:
    """Writes the seed's configuration, or checks it against the stored one."""
    stored = run.read_config()
    if stored is None:
        if parallel.is_primary():
            record = dict(config.to_dict(), seeds=[seed])
            run.write_config(dict(record, seed=seed, input_shape=list(input_shape)))
        return
    stored = dict(stored)
    stored.pop("seed", None)
    stored_shape = tuple(stored.pop("input_shape", input_shape))
    if stored_shape != tuple(input_shape) or not TrainConfig.from_dict(stored).same_run(
        config
    ):
        raise ValueError(
            f"{run.path} holds a run with another configuration; choose another "
            "output directory or delete that one."
        )


def _resume(runs: list[RunDirectory], state: TrainState, mesh, n_real: int):
    """The state after the latest epoch that every run saved, and that epoch.

    Metric records of later epochs are dropped; with no common checkpoint the
    initial state and epoch 0 are returned.
    """
    common = set.intersection(*(set(run.epochs_saved()) for run in runs))
    epoch = max(common, default=0)
    for run in runs:
        if parallel.is_primary():
            run.rewind_metrics(epoch)
    if epoch == 0:
        return state, 0
    template = _host_seed(parallel.to_host(state), 0)
    restored = [run.restore_state(epoch, template) for run in runs]
    restored += [restored[n_real - 1]] * (int(state.step.shape[0]) - n_real)
    logger.info("resuming %d seeds after epoch %d", n_real, epoch)
    return parallel.put_stacked(_stack(restored), mesh), epoch


def _train_epoch(step_fn, state, epoch: int, *, splits, seeds, config, mesh, log):
    """One epoch of training steps, logged every ``config.log_every`` steps.

    ``log(values, step, timing)`` receives the host metrics of the steps since
    the last call. The clock starts after the epoch's first step, which may
    include compilation.
    """
    window, clock, timed = [], None, 0
    batches = list(range(len(splits.train) // config.batch_size))
    images = epoch_batches(splits.train, seeds, epoch, config.batch_size)
    for b, batch in zip(batches, images, strict=True):
        state, metrics = step_fn(state, *parallel.put_stacked(batch, mesh))
        window.append(metrics)
        if clock is None:
            jax.block_until_ready(metrics)
            clock = time.perf_counter()
        else:
            timed += 1
        if len(window) == config.log_every or b == batches[-1]:
            values = parallel.to_host(window)
            elapsed = time.perf_counter() - clock
            log(values, b + 1, (elapsed, timed))
            window, clock, timed = [], time.perf_counter(), 0
    return state


def _eval_records(eval_fn, state, splits: Splits, *, epoch, step, config, mesh, n_real):
    started = time.perf_counter()
    variables = state_variables(state)
    val = evaluate(eval_fn, variables, splits.val, config.eval_batch_size, mesh)
    test = evaluate(eval_fn, variables, splits.test, config.eval_batch_size, mesh)
    elapsed = time.perf_counter() - started
    has_val = len(splits.val) > 0
    return [
        {
            "kind": "eval",
            "epoch": epoch,
            "step": step,
            "val_loss": float(val["loss"][k]) if has_val else None,
            "val_accuracy": float(val["accuracy"][k]) if has_val else None,
            "test_loss": float(test["loss"][k]),
            "test_accuracy": float(test["accuracy"][k]),
            "eval_time_s": elapsed,
        }
        for k in range(n_real)
    ]


def _train_records(values, *, epoch, step, learning_rate, timing, images_per_step):
    elapsed, timed = timing
    loss = np.stack([v["loss"] for v in values]).mean(0)
    accuracy = np.stack([v["accuracy"] for v in values]).mean(0)
    return [
        {
            "kind": "train",
            "epoch": epoch,
            "step": step,
            "loss": float(loss[k]),
            "accuracy": float(accuracy[k]),
            "learning_rate": learning_rate,
            "step_time_s": elapsed / timed if timed else None,
            "images_per_s": images_per_step * timed / elapsed if timed else None,
        }
        for k in range(loss.shape[0])
    ]


def fit(
    model,
    config: TrainConfig,
    splits: Splits,
    *,
    workdirs: Sequence[str | Path] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
    mean=MEAN,
    std=STD,
) -> FitResult:
    """Trains one model per seed of ``config``, all at once.

    Args:
      model: a Flax module with the ``symjax.models`` interface.
      config: the run's configuration (``config.arch`` and ``config.model`` are
        only recorded here; ``model`` is what is trained).
      splits: training, validation and test data, ``uint8`` images.
      workdirs: one run directory per seed of ``config.seeds`` (see
        :mod:`symjax.training.checkpoint`); None keeps everything in memory. A
        directory holding checkpoints of the same configuration is resumed.
      mesh: device mesh with axis ``"seed"`` (default: all devices). When the
        number of seeds is not a multiple of its size, seeds are padded by
        :func:`symjax.training.parallel.pad_seeds`.
      progress: show a progress bar.
      mean, std: per-channel standardisation (default CIFAR-10's).

    Returns:
      A :class:`FitResult`.

    Note:
      Images per second in the records count the images of the seeds asked for,
      all together. With an empty validation split no epoch can be selected: the
      last epoch is kept and the record says ``"selected_on": "last_epoch"``.
    """
    config = config.resolved()
    mesh = parallel.seed_mesh() if mesh is None else mesh
    seeds, n_real = parallel.pad_seeds(config.seeds, mesh.size)
    n_steps = steps_per_epoch(config, len(splits.train))
    input_shape = tuple(int(d) for d in splits.train.images.shape[1:])
    schedule_args = dict(
        steps_per_epoch=n_steps,
        epochs=config.epochs,
        learning_rate=config.learning_rate,
    )
    tx = make_optimizer(
        config.recipe, weight_decay=config.weight_decay, **schedule_args
    )
    schedule = learning_rate_schedule(get_recipe(config.recipe), **schedule_args)

    # Compiled steps and the initial state.
    common = dict(mean=mean, std=std, conv_impl=config.conv_impl)
    step_fn = make_train_step(
        model, tx, mesh, pad=config.pad, flip=config.flip, **common
    )
    eval_fn = make_eval_step(model, mesh, **common)
    state = create_states(model, tx, seeds, input_shape, mesh)

    # Run directories: claim them, resume from the latest common checkpoint.
    runs, start = None, 0
    if workdirs is not None:
        runs = _open_runs(workdirs, config, input_shape, n_real)
        state, start = _resume(runs, state, mesh, n_real)
    logbook = _Logbook(runs, n_real)
    template = _host_seed(parallel.to_host(state_variables(state)), 0)
    selection = _Selection(logbook, runs, template, has_val=len(splits.val) > 0)

    bar = tqdm(
        total=config.epochs * n_steps,
        initial=start * n_steps,
        disable=not progress,
        desc=config.run_name,
        unit="step",
    )
    for epoch in range(start, config.epochs):

        def log(values, b, timing, epoch=epoch):
            step = epoch * n_steps + b
            records = _train_records(
                values,
                epoch=epoch + 1,
                step=step,
                learning_rate=float(schedule(step - 1)),
                timing=timing,
                images_per_step=n_real * config.batch_size,
            )
            logbook.write(records[:n_real])
            bar.update(len(values))
            bar.set_postfix(loss=f"{records[0]['loss']:.3f}")

        state = _train_epoch(
            step_fn,
            state,
            epoch,
            splits=splits,
            seeds=seeds,
            config=config,
            mesh=mesh,
            log=log,
        )

        # Evaluation of both splits; selection on validation only.
        records = _eval_records(
            eval_fn,
            state,
            splits,
            epoch=epoch + 1,
            step=(epoch + 1) * n_steps,
            config=config,
            mesh=mesh,
            n_real=n_real,
        )
        logbook.write(records)
        host_state = parallel.to_host(state)
        selection.update(epoch + 1, records, state_variables(host_state), runs)
        for k, run in enumerate(runs or ()):
            run.save_state(epoch + 1, _host_seed(host_state, k))
        bar.set_postfix(test=f"{records[0]['test_accuracy']:.3f}")
    bar.close()

    # The chosen epoch of each seed.
    outcome = []
    for k in range(n_real):
        evals = logbook.evals(k)
        chosen, last = evals[int(selection.epoch[k])], evals[config.epochs]
        outcome.append(
            {
                "seed": config.seeds[k],
                "epochs": config.epochs,
                "steps": config.epochs * n_steps,
                "best_epoch": int(selection.epoch[k]),
                "selected_on": "val_accuracy" if selection.has_val else "last_epoch",
                "val_accuracy": chosen["val_accuracy"],
                "test_accuracy": chosen["test_accuracy"],
                "final_val_accuracy": last["val_accuracy"],
                "final_test_accuracy": last["test_accuracy"],
                "train_images": len(splits.train),
                "val_images": len(splits.val),
                "test_images": len(splits.test),
            }
        )
        if runs is not None and parallel.is_primary():
            runs[k].write_done(outcome[-1])
    for run in runs or ():
        run.close()
    final = jax.tree.map(lambda x: x[:n_real], state)
    return FitResult(final, _stack(selection.variables), outcome, logbook.history)
