"""The rotation penalty: a check of Proposition 3.4 by training (Section 3.3, Fig. 4).

Proposition 3.4 says that for ``A`` in the intertwiner group ``G_sigma`` of a
layer's activation, ``sigma(A z) = phi(A) sigma(z)``, so a network whose layer ``l``
is transformed by

.. math:: W_l \\mapsto A W_l, \\qquad b_l \\mapsto A b_l

computes the original function again once the next layer is replaced by
``W_{l+1} phi(A)^{-1}`` (eq. 3.5). For ``A`` outside the group, such as a random
rotation, no matrix of the next layer undoes the change: the activation has
destroyed information that the frozen earlier layers cannot restore.

The sanity test of Section 3.3 measures this by training. Starting from a trained
network ``f``, layer ``l`` is transformed by a random ``A``, layers ``<= l`` are
frozen and layers ``> l`` are fine-tuned from their trained values, giving ``f'``.
The *rotation penalty* is

.. math:: \\mathrm{penalty}(l, A) = \\mathrm{acc}(f) - \\mathrm{acc}(f'),

both on the test split, with the fine-tuning epoch of ``f'`` (and, given a grid of
learning rates, the rate) chosen by validation accuracy. Proposition 3.4 predicts
a penalty near zero for ``A`` in ``G_sigma``, once fine-tuning has found the
compensating weights, and the paper reports a positive one for a random
orthogonal ``A``.

Kinds of ``A`` (:data:`KINDS`):

``"group"``
  a random element of the intertwiner group of the layer's hidden space, drawn by
  :meth:`symjax.groups.IntertwinerGroup.sample` (for ReLU a uniform permutation
  times the positive diagonal ``exp(z - 1/2)``, ``z ~ N(0, 1)``, whose entries
  have mean 1; for sigmoid a uniform permutation);
``"orthogonal"``
  a Haar-random orthogonal matrix (:func:`symjax.rotations.haar_orthogonal`);
``"identity"``
  ``A = I``, a control that measures what fine-tuning alone does to accuracy.

Independent trials (different ``A``, data orders and augmentations, the same base
network) are trained together under ``jax.vmap`` and, when several local devices
are present, sharded over them along the trial axis.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax.sharding import Mesh

from symjax.data import ArrayDataset, Splits, augment, epoch_permutation, normalize
from symjax.groups import Dense, Element, Monomial, as_dense
from symjax.nn import use_conv_impl
from symjax.nn.conv import CONV_IMPLS
from symjax.rotations import haar_orthogonal
from symjax.symmetry import SymmetrySpec
from symjax.training import parallel

Array = jax.Array
logger = logging.getLogger(__name__)

KINDS = ("group", "orthogonal", "identity")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """How the layers after the transformed one are fine-tuned.

    Attributes:
      epochs: fine-tuning epochs ``E``; epochs ``0..E`` are candidates for the
        validation choice (epoch 0 is the transformed network before any step).
      batch_size: training examples per step (the last partial batch of an epoch
        is dropped).
      optimizer: ``"adam"`` (AdamW when ``weight_decay > 0``) or ``"sgd"``
        (Nesterov momentum; ``weight_decay`` times the parameters is added to the
        gradient).
      learning_rate: peak learning rate, or a grid of them (a sequence of floats,
        stored as a tuple): each trial is then fine-tuned once per rate, from the
        same ``A`` and with the same data order, and the (rate, epoch) of highest
        validation accuracy is chosen.
      momentum: SGD momentum (ignored by Adam).
      weight_decay: AdamW decay, or the L2 coefficient for SGD.
      schedule: ``"constant"`` or ``"cosine"`` (decay to 0 over all steps).
      augment_pad: random-translation range in pixels (0: no translation); the
        paper's models were trained with 2.
      flip: random horizontal flips.
      eval_batch_size: examples per evaluation batch.
      test_every_epoch: evaluate the test split after every epoch (a learning
        curve); otherwise only before fine-tuning and at the chosen epoch, whose
        weights are kept aside when validation accuracy improves.
      conv_impl: convolution implementation of the fine-tuning and evaluation
        steps (:mod:`symjax.nn.conv`); ``"auto"`` avoids XLA's slow gradient of
        vmapped convolutions on the CPU (about 3x here for 3 trials).
    """

    epochs: int = 2
    batch_size: int = 128
    optimizer: str = "adam"
    learning_rate: float | tuple[float, ...] = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    augment_pad: int = 2
    flip: bool = True
    eval_batch_size: int = 500
    test_every_epoch: bool = False
    conv_impl: str | None = "auto"

    def __post_init__(self):
        for name in ("epochs", "augment_pad"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}.")
        for name in ("batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}."
            )
        if self.conv_impl is not None and self.conv_impl not in CONV_IMPLS:
            raise ValueError(
                f"conv_impl must be None or one of {CONV_IMPLS}, got "
                f"{self.conv_impl!r}."
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"schedule must be one of {SCHEDULES}, got {self.schedule!r}."
            )
        rates = self.learning_rate
        if not isinstance(rates, int | float):
            rates = tuple(rates)
            object.__setattr__(self, "learning_rate", rates)
        if not rates or not all(
            isinstance(r, int | float) and math.isfinite(r) and r > 0
            for r in (rates if isinstance(rates, tuple) else (rates,))
        ):
            raise ValueError(
                "learning_rate must be a positive finite float or a non-empty "
                f"sequence of them, got {self.learning_rate!r}."
            )
        if isinstance(rates, tuple) and len(set(rates)) != len(rates):
            raise ValueError(f"learning_rate repeats a rate: {rates}.")
        for name in ("weight_decay", "momentum"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(
                    f"{name} must be non-negative and finite, got {value!r}."
                )

    @property
    def learning_rates(self) -> tuple[float, ...]:
        """The rates tried, in order (one element for a single rate)."""
        rates = self.learning_rate
        return tuple(rates) if isinstance(rates, tuple) else (rates,)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if isinstance(self.learning_rate, tuple):
            out["learning_rate"] = list(self.learning_rate)
        return out


def make_optimizer(
    config: FinetuneConfig, total_steps: int, learning_rate: float | None = None
):
    """The optax transformation for fine-tuning (see :class:`FinetuneConfig`).

    ``learning_rate`` overrides the configuration's peak rate (which must then be
    a single one when it is left out).
    """
    if learning_rate is None:
        if len(config.learning_rates) != 1:
            raise ValueError(
                f"config holds the grid {config.learning_rates}; pass the rate to "
                "use as learning_rate."
            )
        (learning_rate,) = config.learning_rates
    if config.schedule == "cosine":
        lr = optax.cosine_decay_schedule(learning_rate, max(total_steps, 1))
    else:
        lr = learning_rate
    if config.optimizer == "adam":
        return optax.adamw(lr, weight_decay=config.weight_decay)
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(lr, momentum=config.momentum, nesterov=True),
    )


# ---------------------------------------------------------------------------
# The transformation of one layer.


def _flatten(tree) -> dict[str, Any]:
    return traverse_util.flatten_dict(dict(tree), sep="/")


def _unflatten(flat: Mapping[str, Any]):
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def layer_space(spec: SymmetrySpec, layer: str) -> str:
    """The hidden space of ``layer``, checked to belong to that layer alone.

    Raises:
      ValueError: if ``layer`` is not an activation layer of ``spec``, or its space
        is shared with other layers or tied to another space by a zero-padded
        shortcut (residual networks): transforming one layer of a residual stream
        is not the single-layer change this experiment studies.
    """
    if layer not in spec.layers:
        raise ValueError(
            f"layer={layer!r} is not an activation layer of the model; choose one "
            f"of {tuple(spec.layers)}."
        )
    space = spec.layers[layer]
    sharing = [name for name, s in spec.layers.items() if s == space]
    tied = [
        name
        for name, s in spec.spaces.items()
        if (name == space and s.embed is not None)
        or (s.embed is not None and s.embed[0] == space)
    ]
    if len(sharing) > 1 or tied:
        raise ValueError(
            f"layer={layer!r} lives in space {space!r}, which is shared with "
            f"{sharing} or tied to {tied} by residual connections; the rotation "
            "penalty needs a sequential model (Myrtle, MLP) whose layers have "
            "their own spaces."
        )
    return space


def _roles(spec: SymmetrySpec, space: str, role: str) -> list[tuple[str, int]]:
    """``(path, axis)`` of every variable axis acted on by ``space`` in ``role``."""
    return [
        (path, axis)
        for path, entries in spec.axes.items()
        for axis, entry in enumerate(entries)
        if entry == (space, role)
    ]


def random_transform(
    spec: SymmetrySpec, layer: str, kind: str, key: Array, dtype=jnp.float32
) -> Element:
    """Draws the matrix ``A`` that transforms the pre-activations of ``layer``.

    Args:
      spec: the model's symmetry specification.
      layer: an activation layer of the model.
      kind: one of :data:`KINDS`.
      key: PRNG key.
      dtype: floating dtype of ``A``.

    Returns:
      A :class:`~symjax.groups.Monomial` (``"group"`` for monomial groups, and
      ``"identity"``) or a :class:`~symjax.groups.Dense` ``[n, n]`` matrix
      (``"orthogonal"``, and ``"group"`` when the space carries ``GL_n``).

    Note:
      ``"group"`` samples the group of the layer's *space*, which is the
      activation's group restricted by the layers that read it (for example,
      max pooling keeps only elements whose ``phi`` is non-negative). For ReLU and
      sigmoid the two coincide.
    """
    space = spec.spaces[layer_space(spec, layer)]
    if kind == "group":
        return space.group.sample(key, space.size, dtype)
    if kind == "orthogonal":
        return Dense(haar_orthogonal(key, space.size, dtype))
    if kind == "identity":
        return Monomial.identity(space.size, dtype)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")


def transform_layer(spec: SymmetrySpec, variables, layer: str, A: Element):
    """Applies ``A`` to the output channels of the layer that feeds ``layer``.

    ``W_l -> A W_l`` and ``b_l -> A b_l``: every variable axis with role ``"out"``
    for the layer's space is multiplied by ``A``; the next layer is left as it is,
    so the network's function changes (unless :func:`compensate` follows).

    Args:
      spec: the model's symmetry specification.
      variables: Flax variables of the model.
      layer: an activation layer.
      A: ``[n, n]`` element (any invertible matrix, in or out of the group).

    Returns:
      Variables of the same structure.

    Raises:
      ValueError: when the layer's pre-activations come out of a BatchNorm; a dense
        ``A`` cannot be folded into BatchNorm's per-channel parameters. The
        fine-tuning functions then insert ``A`` after the BatchNorm instead
        (:func:`transformed_features`).
    """
    space = layer_space(spec, layer)
    if _roles(spec, space, "perm"):
        raise ValueError(
            f"layer={layer!r} is normalised by BatchNorm, so A cannot be written into "
            "the weights; use transformed_features, which applies A after the "
            "BatchNorm."
        )
    if A.size != spec.spaces[space].size:
        raise ValueError(
            f"A has size {A.size}, layer {layer!r} has {spec.spaces[space].size} "
            "channels."
        )
    flat = _flatten(variables)
    for path, axis in _roles(spec, space, "out"):
        flat[path] = A.apply(flat[path], axis)
    return _unflatten(flat)


def _transpose(M: Element) -> Element:
    if isinstance(M, Monomial):
        inv = jnp.argsort(M.perm)
        return Monomial(inv, M.scale[inv])
    return Dense(as_dense(M).A.T)


def compensate(spec: SymmetrySpec, variables, layer: str, M: Element):
    """Replaces every weight that reads ``layer``'s features, ``W_{l+1}``, by
    ``W_{l+1} M``.

    With ``M = phi(A)^{-1}`` after :func:`transform_layer` by ``A`` in the group,
    the network computes its original function again (Proposition 3.4).

    Args:
      spec: the model's symmetry specification.
      variables: Flax variables of the model.
      layer: an activation layer.
      M: ``[n, n]`` element; Flax kernels are ``[..., in, out]``, so their input
        axis is multiplied by ``M^T``.

    Returns:
      Variables of the same structure.
    """
    space = layer_space(spec, layer)
    MT = _transpose(M)
    flat = _flatten(variables)
    for path, axis in _roles(spec, space, "in"):
        flat[path] = MT.apply(flat[path], axis)
    return _unflatten(flat)


@dataclasses.dataclass(frozen=True)
class _Cut:
    """The frozen front of a model transformed at one layer.

    ``shared`` maps data to the features of the layer before ``layer`` (or returns
    the data for the first layer); ``piece`` maps those to the transformed
    features of ``layer``. ``A`` enters only through ``piece``, so evaluation runs
    ``shared`` once for all trials.
    """

    model: nn.Module
    spec: SymmetrySpec
    layer: str
    previous: str | None
    in_weights: bool
    module_path: tuple[str, ...]

    @classmethod
    def build(cls, model: nn.Module, layer: str, via: str | None = None) -> _Cut:
        # The specification is host data; build it eagerly even inside a trace.
        with jax.ensure_compile_time_eval():
            spec = model.symmetry_spec()
        space = layer_space(spec, layer)
        layers = tuple(model.layers)
        if layer not in layers:
            raise ValueError(
                f"layer={layer!r} is not a cut point of the model; choose one of "
                f"{layers}."
            )
        index = layers.index(layer)
        modules = {
            tuple(path.split("/")[1:-1]) for path, _ in _roles(spec, space, "out")
        }
        if len(modules) != 1:
            raise ValueError(
                f"layer {layer!r} is produced by modules {sorted(modules)}; expected "
                "exactly one module with output role for its space."
            )
        if via is None:
            via = "intercept" if _roles(spec, space, "perm") else "weights"
        if via not in ("weights", "intercept"):
            raise ValueError(f"via must be 'weights' or 'intercept', got {via!r}.")
        return cls(
            model,
            spec,
            layer,
            layers[index - 1] if index else None,
            via == "weights",
            modules.pop(),
        )

    def shared(self, variables, x: Array) -> Array:
        if self.previous is None:
            return x
        return self.model.apply(variables, x, train=False, stop=self.previous)

    def piece(self, variables, A: Element, h: Array) -> Array:
        kwargs = dict(train=False, start=self.previous, stop=self.layer)
        if self.in_weights:
            moved = transform_layer(self.spec, variables, self.layer, A)
            return self.model.apply(moved, h, **kwargs)
        with self._intercept(A):
            return self.model.apply(variables, h, **kwargs)

    def front(self, variables, A: Element, x: Array) -> Array:
        return self.piece(variables, A, self.shared(variables, x))

    def _intercept(self, A: Element):
        path = self.module_path

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and context.module.path == path:
                out = A.apply(out, -1)
            return out

        return nn.intercept_methods(interceptor)


def transformed_features(
    model: nn.Module, variables, x: Array, layer: str, A: Element
) -> Array:
    """Post-activation features of ``layer`` after its pre-activations are
    multiplied by ``A``: ``sigma(A z_l(x))``.

    Args:
      model: a model with cut points and a symmetry specification.
      variables: its Flax variables.
      x: inputs ``[N, ...]``.
      layer: an activation layer (cut point).
      A: ``[n, n]`` element.

    Returns:
      ``[N, ..., n]`` features.

    Note:
      Without BatchNorm, ``A`` is written into the weights (:func:`transform_layer`).
      With BatchNorm, ``A`` is applied to the BatchNorm's output through a Flax
      method interceptor, i.e. it acts as a frozen ``1 x 1`` channel transform
      between the BatchNorm and the activation.
    """
    return _Cut.build(model, layer).front(variables, A, x)


# ---------------------------------------------------------------------------
# Fine-tuning the layers after the cut.


class _TrialState(NamedTuple):
    """Per-trial trainable state; every leaf has a leading trial axis ``[k, ...]``."""

    params: Any
    batch_stats: Any
    opt_state: Any


def _later_variables(model: nn.Module, variables, layer: str, features):
    """The variables read by ``f_{>layer}``: those ``model.init`` creates when it
    starts at ``layer``."""
    shapes = jax.eval_shape(
        lambda h: model.init(jax.random.PRNGKey(0), h, train=False, start=layer),
        features,
    )
    flat, later = _flatten(variables), _flatten(shapes)
    missing = sorted(set(later) - set(flat))
    if missing:
        raise ValueError(
            f"variables lack {missing}, which the model's later layers use."
        )
    out = {path: flat[path] for path in later}
    params = _unflatten({k[7:]: v for k, v in out.items() if k.startswith("params/")})
    stats = _unflatten(
        {k[12:]: v for k, v in out.items() if k.startswith("batch_stats/")}
    )
    other = sorted(k for k in out if not k.startswith(("params/", "batch_stats/")))
    if other:
        raise ValueError(
            f"the later layers use variables {other} outside params and batch_stats; "
            "only those two collections are supported."
        )
    return params, stats


def _later_apply(model, params, stats, h, layer, train):
    variables = {"params": params}
    if not stats:
        return model.apply(variables, h, train=train, start=layer), stats
    variables["batch_stats"] = stats
    if not train:
        return model.apply(variables, h, train=False, start=layer), stats
    logits, mutated = model.apply(
        variables, h, train=True, start=layer, mutable=["batch_stats"]
    )
    return logits, mutated["batch_stats"]


def _place(tree, mesh: Mesh, split: bool):
    sharding = parallel.seed_sharding(mesh) if split else parallel.replicated(mesh)
    return jax.device_put(tree, sharding)


def _dataset_predictions(predict, dataset: ArrayDataset, batch_size: int) -> np.ndarray:
    """Runs ``predict`` (``[b, ...] uint8 -> [..., b]`` classes) over ``dataset`` in
    fixed-size batches (the last padded) and returns ``[..., n]`` correctness."""
    n = len(dataset)
    size = min(batch_size, n)
    hits = []
    for lo in range(0, n, size):
        idx = np.arange(lo, min(lo + size, n))
        padded = np.concatenate([idx, np.full(size - idx.shape[0], idx[0])])
        pred = np.asarray(predict(dataset.images[padded]))[..., : idx.shape[0]]
        hits.append(pred == dataset.labels[idx])
    return np.concatenate(hits, axis=-1)


def accuracy(
    model: nn.Module,
    variables,
    datasets: ArrayDataset | Sequence[ArrayDataset],
    *,
    preprocess: Callable[[Array], Array] = normalize,
    batch_size: int = 500,
) -> float | list[float]:
    """Top-1 accuracy of ``model`` in inference mode on one dataset (a float) or
    on each of several (a list; one compilation serves all of them)."""
    dtype = _param_dtype(variables)

    @jax.jit
    def predict(images):
        x = preprocess(images).astype(dtype)
        return jnp.argmax(model.apply(variables, x, train=False), -1)

    many = not isinstance(datasets, ArrayDataset)
    size = min(len(d) for d in datasets) if many else len(datasets)
    size = min(batch_size, size)
    out = [
        float(_dataset_predictions(predict, d, size).mean())
        for d in (datasets if many else [datasets])
    ]
    return out if many else out[0]


def _param_dtype(variables):
    return jax.tree_util.tree_leaves(variables["params"])[0].dtype


def run_trials(
    model: nn.Module,
    variables,
    splits: Splits,
    layer: str,
    kind: str,
    seeds: Sequence[int],
    config: FinetuneConfig = FinetuneConfig(),
    *,
    preprocess: Callable[[Array], Array] = normalize,
    devices: Sequence[jax.Device] | None = None,
) -> list[dict[str, Any]]:
    """Rotation penalties of ``k`` independent trials at one layer, trained together.

    Trial ``i`` uses seed ``s_i``: ``A`` from ``fold_in(PRNGKey(s_i), 0)``,
    augmentations from ``fold_in(PRNGKey(s_i), 1)`` and epoch orders from
    ``epoch_permutation(s_i, epoch, n)``. Equal seeds at different layers or kinds
    therefore see the same data order (a paired design).

    Args:
      model: a trained model with cut points (``model.layers``) and
        ``model.symmetry_spec()``; sequential (Myrtle or MLP).
      variables: its Flax variables.
      splits: ``Splits(train, val, test)`` of ``uint8`` images; fine-tuning uses
        ``train``, the epoch is chosen on ``val`` and the penalty is reported on
        ``test``.
      layer: the cut point whose pre-activations are transformed; layers up to
        and including it are frozen.
      kind: one of :data:`KINDS`.
      seeds: ``k`` distinct non-negative integer seeds.
      config: fine-tuning configuration.
      preprocess: maps a ``uint8`` batch to the model's input (cast to the
        parameters' dtype afterwards).
      devices: devices to shard the trials over (default: all local devices);
        the trial axis is padded to a multiple of their number by repeating the
        last seed (:func:`symjax.training.parallel.pad_seeds`), and the copies'
        results are discarded.

    Returns:
      One record per trial: ``layer``, ``layer_index``, ``kind``, ``seed``,
      ``acc_before`` and ``val_acc_before`` (the untransformed network),
      ``learning_rate`` (the chosen rate), ``val_acc`` and ``test_acc`` (lists
      over epochs ``0..E`` at that rate; ``test_acc`` is None after epoch 0
      unless ``config.test_every_epoch``), ``train_loss`` (mean over each epoch
      ``1..E``), ``best_epoch`` (the chosen epoch), ``acc_after`` (test accuracy
      at the chosen rate and epoch), ``penalty = acc_before - acc_after``,
      ``val_acc_by_rate``, ``test_acc_by_rate`` and ``train_loss_by_rate`` (the
      same curves for every rate of the grid, in its order), ``finetune`` (the
      configuration) and ``seconds`` (wall time of the whole batch of trials).
      The choice is the highest validation accuracy over (rate, epoch); ties go
      to the earlier rate of the grid, then to the earlier epoch.

    Note:
      With a grid of ``G`` learning rates, the ``k * G`` fine-tunings run as one
      vmapped batch (each computes its own copy of the frozen front).
      Later layers start from their trained values, not from a new
      initialisation. Layers with BatchNorm after the cut are fine-tuned in
      training mode (batch statistics), evaluated with running averages; the
      frozen front always runs in inference mode. Epoch 0 is a candidate for the
      validation choice, so the penalty never exceeds that of doing nothing by more
      than the validation-test disagreement.
    """
    start_time = time.perf_counter()
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    seeds = [int(s) for s in seeds]
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct non-negative ints, got {seeds}.")
    train = splits.train
    steps = len(train) // config.batch_size
    if config.epochs and steps == 0:
        raise ValueError(
            f"batch_size={config.batch_size} exceeds the {len(train)} training "
            "examples; lower it."
        )
    cut = _Cut.build(model, layer)
    dtype = _param_dtype(variables)
    mesh = parallel.seed_mesh(jax.local_devices() if devices is None else devices)
    padded, n_real = parallel.pad_seeds(seeds, mesh.size)
    n, rates = len(padded), config.learning_rates
    G = len(rates)
    k = n * G

    # Member j fine-tunes seed padded[j % n] at rate rates[j // n]: every rate
    # sees the same A, augmentations and data order of a seed (a paired design).
    keys = jnp.stack([jax.random.PRNGKey(s) for s in padded])
    A = jax.tree_util.tree_map(
        lambda *xs: jnp.stack(xs),
        *[
            random_transform(cut.spec, layer, kind, jax.random.fold_in(key, 0), dtype)
            for key in keys
        ],
    )
    A_seeds = _place(A, mesh, True)
    tile = lambda tree: jax.tree_util.tree_map(  # noqa: E731
        lambda a: jnp.concatenate([a] * G), tree
    )
    A, keys = tile(A), tile(keys)
    member_rate = jnp.repeat(jnp.asarray(rates, dtype), n)
    sample = preprocess(train.images[:1]).astype(dtype)
    features = jax.eval_shape(
        lambda x: cut.front(variables, jax.tree_util.tree_map(lambda a: a[0], A), x),
        sample,
    )
    params, stats = _later_variables(model, variables, layer, features)
    # Both optimizers' updates are linear in the rate (optax's AdamW scales the
    # decayed weights by it too), so one unit-rate optimizer, whose updates each
    # member multiplies by its own rate, serves the whole grid.
    tx = make_optimizer(config, config.epochs * steps, learning_rate=1.0)
    stack = lambda tree: jax.tree_util.tree_map(  # noqa: E731
        lambda a: jnp.broadcast_to(a, (k, *a.shape)).copy(), tree
    )
    state = _TrialState(stack(params), stack(stats), jax.vmap(tx.init)(stack(params)))
    aug_keys = jax.vmap(lambda key: jax.random.fold_in(key, 1))(keys)
    state, A, aug_keys, member_rate = _place(
        (state, A, aug_keys, member_rate), mesh, True
    )
    frozen = _place(variables, mesh, False)

    # One fine-tuning step of every member, and batched predictions.
    def one_step(state, A, key, rate, images, labels, frozen):
        if config.augment_pad or config.flip:
            images = augment(key, images, pad=config.augment_pad, flip=config.flip)
        h = jax.lax.stop_gradient(
            cut.front(frozen, A, preprocess(images).astype(dtype))
        )

        def loss_fn(p):
            logits, new_stats = _later_apply(
                model, p, state.batch_stats, h, layer, True
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            return loss.mean(), new_stats

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        updates = jax.tree_util.tree_map(lambda u: rate * u, updates)
        params = optax.apply_updates(state.params, updates)
        return _TrialState(params, new_stats, opt_state), loss

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state, A, keys, rate, epoch, step, images, labels, frozen):
        keys = jax.vmap(lambda key: jax.random.fold_in(key, epoch * steps + step))(keys)
        with use_conv_impl(config.conv_impl):
            return jax.vmap(one_step, in_axes=(0, 0, 0, 0, 0, 0, None))(
                state, A, keys, rate, images, labels, frozen
            )

    @jax.jit
    def predict(later, A, images, frozen):
        def one(params, stats, A):
            h = cut.piece(frozen, A, h_prev)
            logits, _ = _later_apply(model, params, stats, h, layer, False)
            return jnp.argmax(logits, -1)

        with use_conv_impl(config.conv_impl):
            h_prev = cut.shared(frozen, preprocess(images).astype(dtype))
            return jax.vmap(one)(*later, A)

    @jax.jit
    def keep_improved(best, later, improved):
        def pick(b, s):
            return jnp.where(improved.reshape((-1,) + (1,) * (s.ndim - 1)), s, b)

        return jax.tree_util.tree_map(pick, best, later)

    eval_size = min(config.eval_batch_size, len(splits.val), len(splits.test))

    def evaluate(later, A, dataset):
        """Accuracies ``[m]`` of ``m`` members' later layers ``(params, stats)``
        with their transformations ``A``."""

        def fn(images):
            return predict(later, A, _place(images, mesh, False), frozen)

        return _dataset_predictions(fn, dataset, eval_size).mean(-1)

    def members(tree, index):
        """The members ``index`` (``[n]`` ints) of a ``[k, ...]`` tree, sharded."""
        index = jnp.asarray(index)
        return _place(jax.tree_util.tree_map(lambda a: a[index], tree), mesh, True)

    # The untransformed network, then epochs 0..E of fine-tuning. Epoch 0 is the
    # same network at every rate, so its test accuracy is computed once per seed.
    acc_before, val_before = accuracy(
        model,
        variables,
        [splits.test, splits.val],
        preprocess=preprocess,
        batch_size=config.eval_batch_size,
    )
    later = (state.params, state.batch_stats)
    val_acc = [evaluate(later, A, splits.val)]
    before = evaluate(members(later, np.arange(n)), A_seeds, splits.test)
    test_acc = [np.tile(before, G)]
    best = jax.tree_util.tree_map(jnp.copy, later)
    best_val = val_acc[0]
    losses = []
    for epoch in range(1, config.epochs + 1):
        order = np.stack([epoch_permutation(s, epoch, len(train)) for s in padded])
        order = np.tile(order, (G, 1))
        total = jnp.zeros(k, dtype)
        for step in range(steps):
            idx = order[:, step * config.batch_size : (step + 1) * config.batch_size]
            batch = _place((train.images[idx], train.labels[idx]), mesh, True)
            state, loss = train_step(
                state, A, aug_keys, member_rate, epoch, step, *batch, frozen
            )
            total = total + loss
        losses.append(np.asarray(total) / max(steps, 1))
        later = (state.params, state.batch_stats)
        val_acc.append(evaluate(later, A, splits.val))
        improved = val_acc[-1] > best_val
        best_val = np.maximum(best_val, val_acc[-1])
        best = keep_improved(best, later, _place(jnp.asarray(improved), mesh, True))
        if config.test_every_epoch:
            test_acc.append(evaluate(later, A, splits.test))
        else:
            test_acc.append(np.full(k, np.nan))
        logger.info(
            "layer %s, %s: epoch %d, loss %s, val acc %s",
            layer,
            kind,
            epoch,
            np.round(losses[-1], 4),
            np.round(val_acc[-1], 4),
        )

    # The (rate, epoch) chosen on validation, reported on test.
    val_acc = np.stack(val_acc, 1).reshape(G, n, -1)
    test_acc = np.stack(test_acc, 1).reshape(G, n, -1)
    losses = np.stack(losses, 1).reshape(G, n, -1) if losses else np.zeros((G, n, 0))
    flat = val_acc.transpose(1, 0, 2).reshape(n, -1)
    chosen = np.argmax(flat, axis=1)
    rate_of, epoch_of = np.divmod(chosen, val_acc.shape[2])
    acc_after = evaluate(
        members(best, rate_of * n + np.arange(n)), A_seeds, splits.test
    )
    seconds = time.perf_counter() - start_time
    nan_to_none = lambda row: [None if np.isnan(a) else a for a in row]  # noqa: E731
    results = []
    for i, seed in enumerate(seeds):
        g = int(rate_of[i])
        results.append(
            {
                "layer": layer,
                "layer_index": list(model.layers).index(layer),
                "kind": kind,
                "seed": seed,
                "acc_before": acc_before,
                "val_acc_before": val_before,
                "learning_rate": float(rates[g]),
                "val_acc": val_acc[g, i].tolist(),
                "test_acc": nan_to_none(test_acc[g, i].tolist()),
                "train_loss": losses[g, i].tolist(),
                "best_epoch": int(epoch_of[i]),
                "acc_after": float(acc_after[i]),
                "penalty": acc_before - float(acc_after[i]),
                "val_acc_by_rate": val_acc[:, i].tolist(),
                "test_acc_by_rate": [nan_to_none(t) for t in test_acc[:, i].tolist()],
                "train_loss_by_rate": losses[:, i].tolist(),
                "finetune": config.to_dict(),
                "seconds": seconds,
            }
        )
    return results


def run_rotation_penalty(
    model: nn.Module,
    variables,
    splits: Splits,
    layer: str,
    kind: str,
    seed: int,
    config: FinetuneConfig = FinetuneConfig(),
    *,
    preprocess: Callable[[Array], Array] = normalize,
) -> dict[str, Any]:
    """The rotation penalty of one trial; see :func:`run_trials` for everything."""
    (result,) = run_trials(
        model,
        variables,
        splits,
        layer,
        kind,
        [seed],
        config,
        preprocess=preprocess,
        devices=jax.local_devices()[:1],
    )
    return result


__all__ = [
    "KINDS",
    "FinetuneConfig",
    "accuracy",
    "compensate",
    "layer_space",
    "make_optimizer",
    "random_transform",
    "run_rotation_penalty",
    "run_trials",
    "transform_layer",
    "transformed_features",
]
