"""Tests for symjax/models/mlp.py: cut points and the Table 1 symmetries."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models_testing import (
    RTOL,
    assert_action_invariant,
    assert_cuts_compose,
    init,
    inputs,
    logit_change,
)

from symjax import symmetry
from symjax.groups import activation_group
from symjax.models import MLP

TABLE1 = [
    ("identity", {}),
    ("relu", {}),
    ("leaky_relu", {"negative_slope": 0.2}),
    ("sigmoid", {}),
    ("rbf", {}),
    ("power", {"degree": 2}),
    ("power", {"degree": 3}),
]


def _model(activation="relu", params=None, widths=(6, 5, 6)):
    return MLP(
        widths=widths,
        num_classes=3,
        activation=activation,
        activation_params=params or {},
        dtype=jnp.float64,
        param_dtype=jnp.float64,
    )


def _inputs(shape=(4, 2, 2, 3)):
    return inputs(shape)


def test_layers_and_shapes():
    model, x = _model(), _inputs()
    variables = init(model, x)
    assert model.layers == ("hidden0", "hidden1", "hidden2")
    for layer, width in zip(model.layers, model.widths):
        assert model.apply(variables, x, stop=layer).shape == (4, width)
    assert model.apply(variables, x).shape == (4, 3)


def test_cuts_compose():
    model, x = _model(), _inputs()
    assert_cuts_compose(model, init(model, x), x)


@pytest.mark.parametrize("activation, params", TABLE1)
def test_action_preserves_function_and_maps_features(activation, params):
    model, x = _model(activation, params), _inputs()
    spec = model.symmetry_spec()
    assert all(
        s.group == activation_group(activation, **params) for s in spec.spaces.values()
    )
    assert_action_invariant(model, init(model, x), x)


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_elements_outside_the_group_change_the_function(activation):
    """Sigmoid does not admit positive scalings; ReLU does not admit a general
    invertible matrix. Acting with such elements must change the outputs."""
    model, x = _model(activation), _inputs()
    variables = init(model, x)
    spec = model.symmetry_spec()
    outside = activation_group("relu" if activation == "sigmoid" else "identity")
    elements = {
        name: outside.sample(jax.random.key(i), space.size, jnp.float64)
        for i, (name, space) in enumerate(spec.spaces.items())
    }
    assert logit_change(model, variables, spec, elements, x) > 1e-3


def test_jit_agrees_with_eager():
    model, x = _model("leaky_relu", {"negative_slope": 0.1}), _inputs()
    variables = init(model, x)
    apply = jax.jit(model.apply, static_argnames=("train", "start", "stop"))
    for layer in model.layers:
        np.testing.assert_allclose(
            apply(variables, x, stop=layer),
            model.apply(variables, x, stop=layer),
            rtol=RTOL,
        )
    np.testing.assert_allclose(
        apply(variables, x), model.apply(variables, x), rtol=RTOL
    )


def test_float32_by_default():
    model = MLP(widths=(4,), num_classes=2)
    x = jnp.ones((2, 3), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(variables))
    assert model.apply(variables, x).dtype == jnp.float32


def test_identity_group_acts_by_general_matrices():
    model, x = _model("identity"), _inputs()
    spec = model.symmetry_spec()
    elements = symmetry.sample(spec, jax.random.key(3), jnp.float64)
    assert all(
        activation_group("identity").contains(e) and e.matrix().ndim == 2
        for e in elements.values()
    )
    assert_action_invariant(model, init(model, x), x, elements=elements)


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="widths"):
        MLP(widths=())
    with pytest.raises(ValueError, match="Unknown activation"):
        MLP(activation="swish-ish")
    with pytest.raises(TypeError, match="negative_slope"):
        MLP(activation="relu", activation_params={"negative_slope": 0.1})
