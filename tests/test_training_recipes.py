"""Recipes: decay on kernels and scales only, the schedules, coupled L2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symjax.training import recipes

PARAMS = {
    "conv0": {"kernel": jnp.full((3, 3, 2, 4), 0.5)},
    "bn0": {"scale": jnp.full((4,), 2.0), "bias": jnp.full((4,), 0.3)},
    "head": {"kernel": jnp.full((4, 3), -1.5), "bias": jnp.full((3,), 0.7)},
}


def test_decay_mask_marks_kernels_and_scales():
    mask = recipes.decay_mask(PARAMS)
    assert mask == {
        "conv0": {"kernel": True},
        "bn0": {"scale": True, "bias": False},
        "head": {"kernel": True, "bias": False},
    }


@pytest.mark.parametrize("epochs,quarter", [(50, 12), (8, 2), (3, 1)])
def test_paper_schedule_halves_every_quarter(epochs, quarter):
    steps = 7
    schedule = recipes.learning_rate_schedule(
        recipes.get_recipe("paper"), steps_per_epoch=steps, epochs=epochs
    )
    t = np.arange(epochs * steps)
    want = 1e-3 * 0.5 ** ((t // steps) // quarter)
    got = np.asarray(jax.vmap(schedule)(jnp.asarray(t)))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_one_cycle_rises_then_falls_to_zero():
    schedule = recipes.learning_rate_schedule(
        recipes.get_recipe("cpu"), steps_per_epoch=10, epochs=4
    )
    values = np.asarray(jax.vmap(schedule)(jnp.arange(41)))
    np.testing.assert_allclose(values[[0, 10, 40]], [0.01, 0.1, 0.0], atol=1e-7)
    assert np.all(np.diff(values[:11]) > 0) and np.all(np.diff(values[10:]) < 0)


@pytest.mark.parametrize("name", recipes.RECIPES)
def test_decay_is_coupled_l2_on_masked_leaves(name):
    # With a zero loss gradient the first update is the optimiser's response to
    # the gradient lambda * w of the L2 penalty, on decayed leaves only.
    recipe = recipes.get_recipe(name)
    tx = recipes.make_optimizer(recipe, steps_per_epoch=10, epochs=4)
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(zeros, tx.init(PARAMS), PARAMS)
    eta = recipes.learning_rate_schedule(recipe, steps_per_epoch=10, epochs=4)(0)
    for path, mask in jax.tree_util.tree_leaves_with_path(recipes.decay_mask(PARAMS)):
        w = _get(PARAMS, path)
        u = _get(updates, path)
        g = recipe.weight_decay * w
        if not mask:
            np.testing.assert_array_equal(u, 0.0)
        elif name == "paper":
            # Adam's first step: m_hat = g, v_hat = g^2.
            np.testing.assert_allclose(u, -eta * g / (jnp.abs(g) + 1e-8), rtol=1e-6)
        else:
            # Nesterov's first step: g + mu * g.
            np.testing.assert_allclose(u, -eta * (1 + recipe.momentum) * g, rtol=1e-6)


def test_unknown_recipe_is_named_in_the_error():
    with pytest.raises(ValueError, match="recipe must be one of"):
        recipes.get_recipe("sgd")


def _get(tree, path):
    for entry in path:
        tree = tree[entry.key]
    return tree
