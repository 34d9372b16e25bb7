"""Optimisation recipes: optimiser, learning-rate schedule, weight decay, batches.

Two recipes are provided.

``"paper"`` reproduces the authors' model zoo (their ``train.py``): Adam with
learning rate ``1e-3``; an L2 penalty of ``1e-4`` on every convolution and dense
kernel and every BatchNorm (or LayerNorm) scale, added to the gradient before
Adam's moment estimates as PyTorch's ``Adam(weight_decay=...)`` does; the learning
rate halved every ``max(1, epochs // 4)`` epochs (PyTorch ``StepLR``); 50 epochs
of batches of 32; random horizontal flips and translations by up to 2 pixels.

``"cpu"`` trains in a fraction of the steps, for CPU runs and tests: SGD with
Nesterov momentum 0.9, batches of 128, a one-cycle learning rate that rises
linearly from ``peak / 10`` to ``peak = 0.1`` over the first 25% of the steps and
falls linearly to zero, the same coupled L2 penalty at ``5e-4``, flips and
translations by up to 4 pixels.
"""

from __future__ import annotations

import dataclasses

import jax
import optax

RECIPES = ("paper", "cpu")
"""Names accepted by :func:`get_recipe`."""

_DECAYED_LEAVES = ("kernel", "scale")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a model is optimised.

    Attributes:
      name: the recipe's name.
      optimizer: ``"adam"`` or ``"nesterov"`` (SGD with Nesterov momentum).
      learning_rate: base (``"step"``) or peak (``"one_cycle"``) learning rate.
      weight_decay: coefficient ``lambda`` of the L2 penalty
        ``lambda / 2 * |w|^2`` on kernels and normalisation scales.
      schedule: ``"step"`` (halve every quarter of training) or ``"one_cycle"``.
      epochs: default number of epochs.
      batch_size: default batch size.
      pad: default translation range of the augmentation, in pixels.
      momentum: momentum of ``"nesterov"``.
    """

    name: str
    optimizer: str
    learning_rate: float
    weight_decay: float
    schedule: str
    epochs: int
    batch_size: int
    pad: int
    momentum: float = 0.9


_RECIPES = {
    "paper": Recipe(
        name="paper",
        optimizer="adam",
        learning_rate=1e-3,
        weight_decay=1e-4,
        schedule="step",
        epochs=50,
        batch_size=32,
        pad=2,
    ),
    "cpu": Recipe(
        name="cpu",
        optimizer="nesterov",
        learning_rate=0.1,
        weight_decay=5e-4,
        schedule="one_cycle",
        epochs=10,
        batch_size=128,
        pad=4,
    ),
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (one of :data:`RECIPES`)."""
    if name not in _RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {name!r}.")
    return _RECIPES[name]


def decay_mask(params):
    """True on the leaves that weight decay applies to.

    Those are the leaves named ``kernel`` (convolution and dense weights) and
    ``scale`` (BatchNorm and LayerNorm multipliers), the parameters whose PyTorch
    names contain ``weight`` in the authors' code; biases are not decayed.

    Args:
      params: a Flax ``params`` tree.

    Returns:
      A tree of Python booleans with the structure of ``params``.
    """

    def decayed(path, leaf):
        del leaf
        last = path[-1]
        return getattr(last, "key", getattr(last, "name", None)) in _DECAYED_LEAVES

    return jax.tree_util.tree_map_with_path(decayed, params)


def learning_rate_schedule(
    recipe: Recipe, *, steps_per_epoch: int, epochs: int, learning_rate=None
) -> optax.Schedule:
    """The learning rate as a function of the step count.

    Args:
      recipe: the recipe.
      steps_per_epoch: optimiser steps in one epoch.
      epochs: length of training.
      learning_rate: overrides ``recipe.learning_rate`` when given.

    Returns:
      ``"step"``: ``eta_t = eta * 0.5 ** floor(floor(t / steps_per_epoch) / e_q)``
      with ``e_q = max(1, epochs // 4)``. ``"one_cycle"``: linear from
      ``eta / 10`` to ``eta`` over the first quarter of the ``T`` steps, then
      linear to 0 at step ``T``.
    """
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(
            f"steps_per_epoch and epochs must be positive, got {steps_per_epoch} "
            f"and {epochs}; use a training set at least one batch long."
        )
    eta = recipe.learning_rate if learning_rate is None else float(learning_rate)
    if recipe.schedule == "step":
        return optax.exponential_decay(
            eta,
            transition_steps=max(1, epochs // 4) * steps_per_epoch,
            decay_rate=0.5,
            staircase=True,
        )
    if recipe.schedule == "one_cycle":
        total = steps_per_epoch * epochs
        warmup = max(1, total // 4)
        return optax.join_schedules(
            [
                optax.linear_schedule(eta / 10, eta, warmup),
                optax.linear_schedule(eta, 0.0, max(1, total - warmup)),
            ],
            boundaries=[warmup],
        )
    raise ValueError(f"unknown schedule {recipe.schedule!r} in recipe {recipe.name}.")


def make_optimizer(
    recipe: Recipe | str,
    *,
    steps_per_epoch: int,
    epochs: int,
    learning_rate: float | None = None,
    weight_decay: float | None = None,
) -> optax.GradientTransformation:
    """The optax transformation of a recipe.

    The update of a decayed parameter ``w`` with gradient ``g`` feeds
    ``g + lambda w`` to the optimiser (coupled L2, not AdamW's decoupled decay).

    Args:
      recipe: a :class:`Recipe` or its name.
      steps_per_epoch: optimiser steps in one epoch.
      epochs: length of training.
      learning_rate: overrides the recipe's learning rate.
      weight_decay: overrides the recipe's ``lambda``.

    Returns:
      A ``GradientTransformation`` whose ``update`` needs ``params``.

    Note:
      The authors trained with mixed precision (``torch.cuda.amp``); these recipes
      run in float32.
    """
    if isinstance(recipe, str):
        recipe = get_recipe(recipe)
    decay = recipe.weight_decay if weight_decay is None else float(weight_decay)
    schedule = learning_rate_schedule(
        recipe,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        learning_rate=learning_rate,
    )
    if recipe.optimizer == "adam":
        direction = optax.scale_by_adam()
    elif recipe.optimizer == "nesterov":
        direction = optax.trace(decay=recipe.momentum, nesterov=True)
    else:
        raise ValueError(
            f"unknown optimizer {recipe.optimizer!r} in recipe {recipe.name}."
        )
    return optax.chain(
        optax.masked(optax.add_decayed_weights(decay), decay_mask),
        direction,
        optax.scale_by_learning_rate(schedule),
    )
