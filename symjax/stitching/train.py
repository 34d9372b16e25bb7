"""Training stitching layers between frozen models (paper Section 4).

For two models ``f`` and ``f~`` of one architecture and an activation layer ``l``,
:func:`stitch` trains a stitching layer ``phi`` (:mod:`symjax.stitching.layers`) so
that ``S = f~_{>l} o phi o f_{<=l}`` classifies well:

1. **Freeze.** Both models run in inference mode (BatchNorm with each model's own
   running statistics, which travel with its parameters). Only ``phi``'s
   parameters, a pytree of their own, are differentiated; the front
   ``f_{<=l}`` is evaluated without any VJP, and the back ``f~_{>l}`` only
   propagates gradients to its input, never to its weights.
2. **Initialise.** ``phi`` starts from both models' features on a few training
   images (``init="match"``) or from a data-free default.
3. **Train.** Cross-entropy of ``S`` on the training split with optax; for G_ReLU
   the Sinkhorn ``epsilon`` is annealed geometrically, then ``P`` is rounded and
   ``D`` fine-tuned.
4. **Select.** After every epoch (and before the first) the hard map is scored on
   the validation split; the best epoch's map is the result.
5. **Report.** Test accuracy of the chosen map, of ``f`` and of ``f~``, and the
   stitching penalty (eq. 4.3).

:func:`stitch_pairs` trains the same problem for several model pairs at once: the
pairs are stacked on a leading axis, every step is vmapped over it, and the axis is
sharded across the local devices, so independent (pair, layer, method) jobs that
share shapes run in parallel. :func:`stitch` is the one-pair case.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding

from symjax import data as sdata
from symjax.nn import use_conv_impl
from symjax.stitching import layers as stitch_layers
from symjax.stitching.penalty import stitching_penalty
from symjax.training import parallel

logger = logging.getLogger(__name__)

Array = jax.Array
Preprocess = Callable[[Array], Array]

OPTIMIZERS = ("adam", "sgd")


@dataclasses.dataclass(frozen=True)
class StitchConfig:
    """Everything that defines one stitching run.

    Attributes:
      method: the stitching class, one of
        :data:`symjax.stitching.layers.METHODS`.
      rank: ``r`` of the ``"low_rank"`` class.
      init: ``"match"`` (from both models' features) or ``"neutral"``; see
        :mod:`symjax.stitching.layers`.
      optimizer: ``"adam"`` or ``"sgd"`` (plain SGD, as the authors).
      learning_rate: step size.
      epochs: training epochs (for G_ReLU: epochs of the relaxed stage).
      finetune_epochs: G_ReLU only: epochs that train ``D`` with ``P`` rounded and
        fixed.
      batch_size: training batch size (the last incomplete batch is dropped).
      eval_batch_size: batch size of evaluation.
      augment: random crops (4-pixel padding) and flips of the training images.
      epsilon_start: G_ReLU: Sinkhorn regularisation at the first step.
      epsilon_end: G_ReLU: at the last relaxed step (geometric schedule between).
      sinkhorn_iterations: G_ReLU: Sinkhorn's iteration budget per step.
      sinkhorn_threshold: G_ReLU: Sinkhorn's tolerance.
      l1: ``"sparse"``: weight of the L1 penalty.
      sparse_tolerance: ``"sparse"``: relative threshold for zeroing entries.
      match_examples: training images whose features initialise ``phi``.
      match_rows: at most this many feature vectors (pixels) enter the
        initialisation.
      conv_impl: convolution implementation for the frozen models (see
        :mod:`symjax.nn.conv`; ``"auto"`` is fast on every backend).
      seed: fixes batches, augmentation, the initialisation's images and keys.

    The defaults (Adam at ``1e-3``, 10 epochs, ``epsilon`` from 0.1 to 0.005, then
    3 epochs of ``D``) were chosen on CIFAR-10 validation splits; the authors'
    code trains 20 epochs of plain SGD at ``1e-3`` from a random layer, which is
    ``optimizer="sgd", epochs=20, init="neutral"`` here.
    """

    method: str = "g_relu"
    rank: int = 1
    init: str = "match"
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    epochs: int = 10
    finetune_epochs: int = 3
    batch_size: int = 128
    eval_batch_size: int = 500
    augment: bool = True
    epsilon_start: float = 0.1
    epsilon_end: float = 0.005
    sinkhorn_iterations: int = 100
    sinkhorn_threshold: float = 1e-3
    l1: float = 1e-4
    sparse_tolerance: float = 1e-2
    match_examples: int = 500
    match_rows: int = 50_000
    conv_impl: str | None = "auto"
    seed: int = 0

    def __post_init__(self):
        if self.method not in stitch_layers.METHODS:
            raise ValueError(
                f"method must be one of {stitch_layers.METHODS}, got {self.method!r}."
            )
        if self.init not in stitch_layers.INITS:
            raise ValueError(
                f"init must be one of {stitch_layers.INITS}, got {self.init!r}."
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}."
            )
        for name in ("epochs", "finetune_epochs", "match_examples"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative.")
        for name in ("batch_size", "eval_batch_size", "rank", "match_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer.")
        if not 0 < self.epsilon_end <= self.epsilon_start:
            raise ValueError(
                "need 0 < epsilon_end <= epsilon_start, got "
                f"{self.epsilon_end} and {self.epsilon_start}."
            )

    def layer(self) -> stitch_layers.StitchingLayer:
        """The stitching layer this configuration trains."""
        options: dict[str, Any] = {}
        if self.method != "identity":
            options["init_mode"] = self.init
        if self.method == "low_rank":
            options["rank"] = self.rank
        if self.method == "sparse":
            options.update(l1=self.l1, tolerance=self.sparse_tolerance)
        if self.method == "g_relu":
            options.update(
                max_iterations=self.sinkhorn_iterations,
                threshold=self.sinkhorn_threshold,
            )
        return stitch_layers.make_layer(self.method, **options)

    @property
    def label(self) -> str:
        """A short name of the class, e.g. ``"low_rank:1"``."""
        return f"low_rank:{self.rank}" if self.method == "low_rank" else self.method


@dataclasses.dataclass
class StitchResult:
    """The outcome of stitching one model pair at one layer with one class.

    Attributes:
      layer: the activation layer ``l``.
      config: the run's configuration.
      val_accuracy: validation accuracy of the hard map after each epoch; entry 0
        is the initialisation.
      train_loss: mean training cross-entropy of each epoch (entry 0 is NaN).
      epsilon: Sinkhorn ``epsilon`` at the end of each epoch (G_ReLU relaxed stage;
        NaN elsewhere).
      chosen_epoch: the epoch with the best validation accuracy (the earliest on
        ties).
      test_accuracy: test accuracy of the stitched network at ``chosen_epoch``.
      accuracy_a: test accuracy of ``f``.
      accuracy_b: test accuracy of ``f~``.
      penalty: eq. 4.3 on the test split, a fraction.
      diagnostics: scalars describing the chosen map; for G_ReLU also the relaxed
        matrix at rounding (``marginal_error``, ``distance_to_permutation``,
        ``mass_on_permutation``, ``sinkhorn_converged``), prefixed ``rounding_``.
      stitch_map: the chosen hard map (an :class:`~symjax.stitching.layers.Affine`
        or a :class:`~symjax.groups.Monomial`).
      seconds: wall time of the run (shared equally by pairs trained together).
    """

    layer: str
    config: StitchConfig
    val_accuracy: list[float]
    train_loss: list[float]
    epsilon: list[float]
    chosen_epoch: int
    test_accuracy: float
    accuracy_a: float
    accuracy_b: float
    penalty: float
    diagnostics: dict[str, float]
    stitch_map: Any
    seconds: float

    def to_record(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary (everything but ``stitch_map``)."""
        record = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("stitch_map", "config")
        }
        record["method"] = self.config.label
        record["config"] = dataclasses.asdict(self.config)
        return _jsonable(record)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float | np.floating) and not math.isfinite(float(x)):
        return None
    if isinstance(x, np.generic):
        return x.item()
    return x


# ---------------------------------------------------------------------------
# Pairs on a leading axis, sharded across devices.


def stack_trees(trees: Sequence[Any]) -> Any:
    """Stacks pytrees of one structure on a new leading axis."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _unstack(tree, k: int) -> list:
    return [jax.tree_util.tree_map(lambda x, i=i: x[i], tree) for i in range(k)]


def _pad_pairs(tree, k: int, total: int):
    """Repeats the last pair so that the leading axis has ``total`` entries."""
    if total == k:
        return tree
    return jax.tree_util.tree_map(
        lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], total - k, axis=0)]), tree
    )


def _pair_sharding(k: int) -> tuple[int, NamedSharding | None]:
    """Padded pair count and the sharding of the pair axis over the devices.

    With several devices the pairs are split over the training helper's
    one-dimensional mesh (:func:`symjax.training.parallel.seed_mesh`), padded by
    repeating the last pair; with one device nothing is sharded.
    """
    if jax.device_count() == 1:
        return k, None
    mesh = parallel.seed_mesh()
    total = -(-k // mesh.size) * mesh.size
    return total, parallel.seed_sharding(mesh)


def _shard(tree, sharding):
    if sharding is None:
        return tree
    return jax.device_put(tree, sharding)


# ---------------------------------------------------------------------------
# Jitted steps, built once per static configuration.


def _optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    if name == "adam":
        return optax.adam(learning_rate)
    return optax.sgd(learning_rate)


def _cut(model_a, model_b, layer: str):
    """``f_{<=l}`` of ``model_a`` and ``f~_{>l}`` of ``model_b``, inference mode."""

    def front(va, x):
        return model_a.apply(va, x, train=False, stop=layer)

    def back(vb, h):
        return model_b.apply(vb, h, train=False, start=layer)

    return front, back


@functools.lru_cache(maxsize=128)
def _train_programs(
    model_a,
    model_b,
    layer: str,
    stitch_layer: stitch_layers.StitchingLayer,
    optimizer: str,
    learning_rate: float,
    augment: bool,
    preprocess: Preprocess,
    conv_impl: str | None,
):
    """The jitted, pair-vmapped training step, optimiser init and evaluation."""
    tx = _optimizer(optimizer, learning_rate)
    front, back = _cut(model_a, model_b, layer)

    def pair_step(va, vb, params, state, opt_state, x, y, epsilon):
        # The front is only evaluated: nothing below differentiates it.
        h = front(va, x)

        def loss_fn(p):
            z, new_state = stitch_layer.apply(p, state, h, epsilon)
            logits = back(vb, z)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return ce + stitch_layer.regularizer(p), (ce, new_state)

        # OTT's Sinkhorn broadcasts implicitly in its backward pass, which is
        # traced here (see symjax.stitching.sinkhorn.doubly_stochastic).
        with jax.numpy_rank_promotion("allow"):
            grads, (ce, new_state) = jax.grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_state, opt_state, ce

    @jax.jit
    def train_step(va, vb, params, state, opt_state, images, labels, key, epsilon):
        with use_conv_impl(conv_impl):
            x = sdata.augment(key, images) if augment else images
            x = preprocess(x)
            return jax.vmap(pair_step, in_axes=(0, 0, 0, 0, 0, None, None, None))(
                va, vb, params, state, opt_state, x, labels, epsilon
            )

    init_opt = jax.jit(jax.vmap(tx.init))
    evaluate = jax.jit(jax.vmap(stitch_layer.evaluate, in_axes=(0, 0, None)))
    return train_step, init_opt, evaluate


class StitchStep(NamedTuple):
    """The jitted functions that train one stitching layer for stacked pairs.

    Attributes:
      train_step: ``(va, vb, params, state, opt_state, images, labels, key,
        epsilon) -> (params, state, opt_state, loss)``, everything with a leading
        pair axis except the uint8 ``images`` ``[B, H, W, C]``, ``labels`` ``[B]``,
        the PRNG ``key`` and the scalar ``epsilon``.
      init_optimizer: ``params -> opt_state``.
      evaluate: ``(params, state, epsilon) -> (hard maps, diagnostics)``.
    """

    train_step: Callable
    init_optimizer: Callable
    evaluate: Callable


def make_stitch_step(
    model_a,
    model_b,
    layer: str,
    config: StitchConfig,
    *,
    stitch_layer: stitch_layers.StitchingLayer | None = None,
    preprocess: Preprocess | None = None,
) -> StitchStep:
    """The compiled-once step of :func:`stitch_pairs`, for benchmarks and custom
    loops.

    Args:
      model_a, model_b: front and back architectures.
      layer: the activation layer.
      config: optimiser, learning rate, augmentation and convolution settings.
      stitch_layer: the layer to train (default ``config.layer()``).
      preprocess: uint8 batch -> model inputs (default CIFAR-10 normalisation).
    """
    return StitchStep(
        *_train_programs(
            model_a,
            model_b,
            layer,
            config.layer() if stitch_layer is None else stitch_layer,
            config.optimizer,
            config.learning_rate,
            config.augment,
            sdata.normalize if preprocess is None else preprocess,
            config.conv_impl,
        )
    )


@functools.lru_cache(maxsize=128)
def _eval_programs(model_a, model_b, layer: str, preprocess: Preprocess, conv_impl):
    """The jitted, pair-vmapped correct-count of stitched networks, and features."""
    front, back = _cut(model_a, model_b, layer)

    @jax.jit
    def correct(va, vb, hard, images, labels):
        with use_conv_impl(conv_impl):
            x = preprocess(images)

            def one(va, vb, hard):
                logits = back(vb, hard.apply(front(va, x), -1))
                return jnp.sum(jnp.argmax(logits, -1) == labels)

            return jax.vmap(one)(va, vb, hard)

    @jax.jit
    def features(va, vb, images, rows):
        with use_conv_impl(conv_impl):
            x = preprocess(images)

            def one(va, vb):
                X, Y = front(va, x), model_b.apply(vb, x, train=False, stop=layer)
                n = X.shape[-1]
                return X.reshape(-1, n)[rows], Y.reshape(-1, n)[rows]

            return jax.vmap(one)(va, vb)

    return correct, features


@functools.lru_cache(maxsize=64)
def _model_program(model, preprocess: Preprocess, conv_impl: str | None):
    @jax.jit
    def correct(variables, images, labels):
        with use_conv_impl(conv_impl):
            x = preprocess(images)

            def one(v):
                logits = model.apply(v, x, train=False)
                return jnp.sum(jnp.argmax(logits, -1) == labels)

            return jax.vmap(one)(variables)

    return correct


def _padded_batches(dataset, batch_size: int):
    """Fixed-shape evaluation batches; padding rows carry the label -1."""
    n = len(dataset)
    for start in range(0, n, batch_size):
        images = dataset.images[start : start + batch_size]
        labels = dataset.labels[start : start + batch_size]
        short = batch_size - labels.shape[0]
        if short:
            images = np.concatenate(
                [images, np.zeros((short, *images.shape[1:]), images.dtype)]
            )
            labels = np.concatenate([labels, -np.ones((short,), labels.dtype)])
        yield images, labels


def model_accuracy(
    model,
    variables: Sequence[Any],
    dataset,
    *,
    preprocess: Preprocess | None = None,
    batch_size: int = 500,
    conv_impl: str | None = "auto",
) -> np.ndarray:
    """Accuracies of several members of one architecture, in inference mode.

    Args:
      model: the Flax module.
      variables: one variables dict per member.
      dataset: an :class:`~symjax.data.ArrayDataset`.
      preprocess: maps a uint8 batch to model inputs (default CIFAR-10
        :func:`~symjax.data.normalize`).
      batch_size: evaluation batch size.
      conv_impl: see :class:`StitchConfig`.

    Returns:
      ``[k]`` accuracies (fractions).
    """
    preprocess = sdata.normalize if preprocess is None else preprocess
    k = len(variables)
    total, sharding = _pair_sharding(k)
    stacked = _shard(_pad_pairs(stack_trees(variables), k, total), sharding)
    correct = _model_program(model, preprocess, conv_impl)
    count = np.zeros((total,), np.int64)
    for images, labels in _padded_batches(dataset, batch_size):
        count += np.asarray(correct(stacked, images, labels))
    return count[:k] / len(dataset)


# ---------------------------------------------------------------------------
# The driver.


def _check_models(model_a, model_b, layer: str) -> None:
    for name, model in (("model_a", model_a), ("model_b", model_b)):
        if layer not in model.layers:
            raise ValueError(
                f"layer={layer!r} is not an activation layer of {name}; choose one "
                f"of {model.layers}."
            )


def _feature_shape(model, variables, layer: str, image_shape) -> tuple[int, ...]:
    """Shape of one example's features at ``layer``: ``(H, W, n)`` or ``(n,)``."""
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    out = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False, stop=layer), variables, x
    )
    return tuple(out.shape[1:])


def _epsilon_schedule(config: StitchConfig, steps: int) -> Callable[[int], float]:
    """Geometric annealing from ``epsilon_start`` to ``epsilon_end`` over ``steps``."""
    ratio = config.epsilon_end / config.epsilon_start

    def epsilon(t: int) -> float:
        frac = min(t / max(steps - 1, 1), 1.0)
        return config.epsilon_start * ratio**frac

    return epsilon


def _match_features(features, va, vb, train, config: StitchConfig, pixels: int):
    """Both models' features on ``match_examples`` training images.

    Returns:
      ``(X, Y)``, each ``[pairs, m, n]``: ``m`` rows (a fixed random subset of the
      images' ``pixels`` feature vectors each, at most about ``match_rows`` in
      all) of ``n`` channels.
    """
    rng = np.random.default_rng([config.seed, 1])
    count = max(1, min(config.match_examples, len(train)))
    idx = np.sort(rng.choice(len(train), size=count, replace=False))
    Xs, Ys = [], []
    for start in range(0, count, config.eval_batch_size):
        images = train.images[idx[start : start + config.eval_batch_size]]
        rows_here = images.shape[0] * pixels
        keep = max(1, min(rows_here, config.match_rows * images.shape[0] // count))
        rows = np.sort(rng.choice(rows_here, size=keep, replace=False))
        X, Y = features(va, vb, images, rows)
        Xs.append(X)
        Ys.append(Y)
    return jnp.concatenate(Xs, axis=1), jnp.concatenate(Ys, axis=1)


class _Selection:
    """Per-pair history of the validation score and the best hard map so far."""

    def __init__(self, total: int):
        self.val, self.loss, self.epsilon = [], [], []
        self.best_val = np.full((total,), -np.inf)
        self.best_epoch = np.zeros((total,), np.int64)
        self.best_map = None
        self.best_diagnostics: dict[str, np.ndarray] = {}

    def record(self, epoch, val, loss, epsilon, hard, diagnostics) -> None:
        self.val.append(val)
        self.loss.append(loss)
        self.epsilon.append(epsilon)
        better = val > self.best_val
        self.best_val = np.where(better, val, self.best_val)
        self.best_epoch = np.where(better, epoch, self.best_epoch)
        if self.best_map is None:
            self.best_map = hard
        else:
            mask = jnp.asarray(better)
            self.best_map = jax.tree_util.tree_map(
                lambda new, old: jnp.where(
                    mask.reshape((-1,) + (1,) * (new.ndim - 1)), new, old
                ),
                hard,
                self.best_map,
            )
        names = set(diagnostics) | set(self.best_diagnostics)
        nan = np.full(better.shape, np.nan)
        self.best_diagnostics = {
            name: np.where(
                better,
                diagnostics.get(name, nan),
                self.best_diagnostics.get(name, nan),
            )
            for name in names
        }


def stitch_pairs(
    model_a,
    variables_a: Sequence[Any],
    model_b,
    variables_b: Sequence[Any],
    layer: str,
    splits,
    config: StitchConfig | None = None,
    *,
    preprocess: Preprocess | None = None,
    accuracies: tuple[Sequence[float], Sequence[float]] | None = None,
) -> list[StitchResult]:
    """Stitches ``k`` model pairs at one layer with one class, in parallel.

    Pair ``i`` is ``(variables_a[i], variables_b[i])``; the stitched network is
    ``model_b_{>layer} o phi_i o model_a_{<=layer}``. All pairs see the same
    batches; each has its own ``phi_i``, epoch selection and result.

    Args:
      model_a: the front architecture (Flax module).
      variables_a: ``k`` variables dicts (params and batch statistics).
      model_b: the back architecture; its features at ``layer`` must have as many
        channels as ``model_a``'s.
      variables_b: ``k`` variables dicts.
      layer: an activation layer of both models (``model.layers``).
      splits: :class:`~symjax.data.Splits` (``train``, ``val``, ``test``), uint8.
      config: the run's :class:`StitchConfig` (default: G_ReLU).
      preprocess: maps a uint8 batch to model inputs (default CIFAR-10
        :func:`~symjax.data.normalize`).
      accuracies: test accuracies ``([k] of f, [k] of f~)`` if already known;
        computed otherwise.

    Returns:
      One :class:`StitchResult` per pair.
    """
    config = StitchConfig() if config is None else config
    preprocess = sdata.normalize if preprocess is None else preprocess
    _check_models(model_a, model_b, layer)
    k = len(variables_a)
    if k == 0 or len(variables_b) != k:
        raise ValueError(
            f"variables_a and variables_b must be non-empty and of one length, got "
            f"{len(variables_a)} and {len(variables_b)}."
        )
    image_shape = splits.train.images.shape[1:]
    shape = _feature_shape(model_a, variables_a[0], layer, image_shape)
    shape_b = _feature_shape(model_b, variables_b[0], layer, image_shape)
    if shape != shape_b:
        raise ValueError(
            f"layer {layer!r} gives features {shape} in model_a and {shape_b} in "
            "model_b; stitching needs models of one architecture."
        )
    n, pixels = shape[-1], int(np.prod(shape[:-1]))
    if len(splits.train) < config.batch_size:
        raise ValueError(
            f"the training split has {len(splits.train)} examples, fewer than "
            f"batch_size={config.batch_size}; lower batch_size."
        )
    started = time.perf_counter()

    # Reference accuracies, and the pairs stacked and sharded.
    if accuracies is None:
        accuracies = tuple(
            model_accuracy(
                model,
                variables,
                splits.test,
                preprocess=preprocess,
                batch_size=config.eval_batch_size,
                conv_impl=config.conv_impl,
            )
            for model, variables in ((model_a, variables_a), (model_b, variables_b))
        )
    acc_a, acc_b = (np.asarray(a, np.float64) for a in accuracies)
    total, sharding = _pair_sharding(k)
    va = _shard(_pad_pairs(stack_trees(variables_a), k, total), sharding)
    vb = _shard(_pad_pairs(stack_trees(variables_b), k, total), sharding)
    dtype = jax.tree_util.tree_leaves(variables_a[0])[0].dtype

    def programs(current):
        return _train_programs(
            model_a,
            model_b,
            layer,
            current,
            config.optimizer,
            config.learning_rate,
            config.augment,
            preprocess,
            config.conv_impl,
        )

    # Initialise phi for every pair.
    current = config.layer()
    correct, features = _eval_programs(
        model_a, model_b, layer, preprocess, config.conv_impl
    )
    feats = None
    if config.init == "match" and config.method != "identity":
        feats = _match_features(features, va, vb, splits.train, config, pixels)
    # The initialisation runs on one device (its Hungarian rounding is a host
    # callback, whose result cannot mix with arrays sharded over several devices
    # outside jit); only its result is spread over the pair mesh.
    keys = jax.random.split(jax.random.key(config.seed), total)
    init = jax.vmap(
        lambda key, f: current.init(key, n, dtype, f),
        in_axes=(0, None if feats is None else 0),
    )
    params, state = _shard(init(keys, jax.device_get(feats)), sharding)

    def accuracy_of(hard, dataset) -> np.ndarray:
        count = np.zeros((total,), np.int64)
        for images, labels in _padded_batches(dataset, config.eval_batch_size):
            count += np.asarray(correct(va, vb, hard, images, labels))
        return count / len(dataset)

    # Train stage after stage; score the hard map on validation after each epoch.
    selection = _Selection(total)
    rounding: dict[str, np.ndarray] = {}
    epochs = 0 if config.method == "identity" else config.epochs
    steps_per_epoch = len(splits.train) // config.batch_size
    epoch, epsilon = 0, config.epsilon_start
    first = True
    while current is not None:
        train_step, init_opt, evaluate = programs(current)
        # A stage without epochs (the identity class) needs no optimiser state.
        opt_state = init_opt(params) if epochs > 0 else None
        schedule = _epsilon_schedule(config, epochs * steps_per_epoch)
        relaxed = isinstance(current, stitch_layers.GReLU)

        for e in range(0 if first else 1, epochs + 1):
            losses = []
            if e > 0:
                epoch += 1
                order = sdata.batch_indices(
                    len(splits.train),
                    config.batch_size,
                    seed=config.seed,
                    epoch=epoch,
                    drop_remainder=True,
                )
                for t, idx in enumerate(order):
                    if relaxed:
                        epsilon = schedule((e - 1) * steps_per_epoch + t)
                    key = jax.random.fold_in(jax.random.key(config.seed), epoch)
                    params, state, opt_state, ce = train_step(
                        va,
                        vb,
                        params,
                        state,
                        opt_state,
                        splits.train.images[idx],
                        splits.train.labels[idx],
                        jax.random.fold_in(key, t),
                        jnp.asarray(epsilon, dtype),
                    )
                    losses.append(ce)
            hard, diagnostics = evaluate(params, state, jnp.asarray(epsilon, dtype))
            diagnostics = {name: np.asarray(v) for name, v in diagnostics.items()}
            val = accuracy_of(hard, splits.val)
            loss = (
                np.mean(np.stack([np.asarray(c) for c in losses]), axis=0)
                if losses
                else np.full((total,), np.nan)
            )
            selection.record(
                epoch, val, loss, epsilon if relaxed else math.nan, hard, diagnostics
            )
            logger.info(
                "stitch %s at %s, epoch %d: val %s",
                config.label,
                layer,
                epoch,
                np.round(val[:k], 4),
            )

        # Enter the next stage (G_ReLU: round P, then fine-tune D).
        nxt = current.successor
        if nxt is not None:
            rounding = diagnostics
            params, state = jax.vmap(current.advance)(hard)
            epochs = config.finetune_epochs
        current, first = nxt, False

    # Test accuracy of the chosen maps.
    test = accuracy_of(selection.best_map, splits.test)
    seconds = (time.perf_counter() - started) / k
    results = []
    for i in range(k):
        diagnostics = {
            name: float(v[i])
            for name, v in selection.best_diagnostics.items()
            if np.isfinite(v[i])
        }
        diagnostics.update(
            {f"rounding_{name}": float(v[i]) for name, v in rounding.items()}
        )
        results.append(
            StitchResult(
                layer=layer,
                config=config,
                val_accuracy=[float(v[i]) for v in selection.val],
                train_loss=[float(v[i]) for v in selection.loss],
                epsilon=[float(v) for v in selection.epsilon],
                chosen_epoch=int(selection.best_epoch[i]),
                test_accuracy=float(test[i]),
                accuracy_a=float(acc_a[i]),
                accuracy_b=float(acc_b[i]),
                penalty=float(stitching_penalty(acc_a[i], acc_b[i], test[i])),
                diagnostics=diagnostics,
                stitch_map=jax.tree_util.tree_map(
                    lambda x, i=i: x[i], selection.best_map
                ),
                seconds=seconds,
            )
        )
    return results


def stitch(
    model_a,
    variables_a,
    model_b,
    variables_b,
    layer: str,
    splits,
    config: StitchConfig | None = None,
    *,
    method: str | None = None,
    preprocess: Preprocess | None = None,
    accuracies: tuple[float, float] | None = None,
) -> StitchResult:
    """Stitches ``f~_{>layer} o phi o f_{<=layer}`` for one pair.

    Args:
      model_a, variables_a: ``f`` (Flax module and its variables).
      model_b, variables_b: ``f~``.
      layer: an activation layer of both (``model.layers``).
      splits: :class:`~symjax.data.Splits`; ``val`` selects the epoch, ``test`` is
        only reported.
      config: :class:`StitchConfig`.
      method: shorthand that replaces ``config.method``.
      preprocess: see :func:`stitch_pairs`.
      accuracies: ``(Acc f, Acc f~)`` on the test split if already known.

    Returns:
      The :class:`StitchResult`.
    """
    config = StitchConfig() if config is None else config
    if method is not None:
        config = dataclasses.replace(config, method=method)
    acc = None if accuracies is None else ([accuracies[0]], [accuracies[1]])
    return stitch_pairs(
        model_a,
        [variables_a],
        model_b,
        [variables_b],
        layer,
        splits,
        config,
        preprocess=preprocess,
        accuracies=acc,
    )[0]
