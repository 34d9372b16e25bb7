"""Tests for symjax/models/myrtle.py: cut points, BatchNorm and pooling symmetries."""

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
from symjax.groups import Monomial, activation_group
from symjax.models import Myrtle

# 16x16 inputs reach the head at 2x2 pixels; the global max pooling there is the
# 4x4 pooling of a 32x32 input, and keeps the tests fast.
X = inputs((3, 16, 16, 3))


def _model(activation="relu", params=None, batch_norm=True):
    return Myrtle(
        width=2,
        num_classes=4,
        activation=activation,
        activation_params=params or {},
        batch_norm=batch_norm,
        dtype=jnp.float64,
        param_dtype=jnp.float64,
    )


def test_layers_shapes_and_variables():
    model = _model()
    variables = init(model, X)
    assert model.layers == ("block0", "block1", "block2", "block3")
    shapes = [model.apply(variables, X, stop=layer).shape for layer in model.layers]
    assert shapes == [(3, 16, 16, 2), (3, 16, 16, 4), (3, 8, 8, 8), (3, 4, 4, 16)]
    assert set(variables) == {"params", "batch_stats"}
    assert "bias" not in variables["params"]["conv0"]

    plain = _model(batch_norm=False)
    plain_vars = init(plain, X)
    assert set(plain_vars) == {"params"}
    assert plain_vars["params"]["conv3"]["bias"].shape == (16,)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_cuts_compose(batch_norm):
    model = _model(batch_norm=batch_norm)
    assert_cuts_compose(model, init(model, X), X)


def test_cuts_compose_in_training_mode():
    """BatchNorm recomputes its statistics from the batch, which is the same batch
    whichever cut point the computation restarts from."""
    model = _model()
    variables = init(model, X)
    logits, _ = model.apply(variables, X, train=True, mutable=["batch_stats"])
    for layer in model.layers:
        h, _ = model.apply(
            variables, X, train=True, stop=layer, mutable=["batch_stats"]
        )
        out, _ = model.apply(
            variables, h, train=True, start=layer, mutable=["batch_stats"]
        )
        np.testing.assert_allclose(out, logits, rtol=RTOL, atol=RTOL)


@pytest.mark.parametrize(
    "activation, params",
    [("relu", {}), ("leaky_relu", {"negative_slope": 0.1}), ("sigmoid", {})],
)
@pytest.mark.parametrize("batch_norm", [True, False])
def test_action_preserves_function_and_maps_features(activation, params, batch_norm):
    model = _model(activation, params, batch_norm)
    assert_action_invariant(model, init(model, X), X)


def test_group_restrictions_follow_batch_norm_and_pooling():
    def kinds(model):
        return [s.group.kind for s in model.symmetry_spec().spaces.values()]

    assert kinds(_model("relu")) == ["positive_monomial"] * 4
    assert kinds(_model("sigmoid")) == ["permutation"] * 4
    # x^3: BatchNorm allows signs, max pooling does not.
    cube = {"degree": 3}
    assert (
        kinds(_model("power", cube)) == ["nonzero_monomial"] + ["positive_monomial"] * 3
    )
    # The identity: GL_n survives only on the unpooled block without BatchNorm.
    assert (
        kinds(_model("identity", batch_norm=False))
        == ["general_linear"] + ["positive_monomial"] * 3
    )


@pytest.mark.parametrize(
    "activation, params, batch_norm",
    [("power", {"degree": 3}, True), ("identity", {}, False), ("rbf", {}, True)],
)
def test_restricted_groups_preserve_function(activation, params, batch_norm):
    model = _model(activation, params, batch_norm)
    assert_action_invariant(model, init(model, X), X)


def test_sign_flips_through_max_pooling_change_the_function():
    """x^3 intertwines sign flips (phi(A) = A^3), but max pooling after block 2
    does not commute with them: the spec is right to exclude them there."""
    model = _model("power", {"degree": 3})
    variables = init(model, X)
    spec = model.symmetry_spec()
    elements = symmetry.identity(spec, jnp.float64)
    n = spec.spaces["block2"].size
    flips = jnp.where(jnp.arange(n) % 2 == 0, -1.0, 1.0).astype(jnp.float64)
    elements["block2"] = Monomial(jnp.arange(n), flips)
    assert activation_group("power", degree=3).contains(elements["block2"])
    assert not spec.spaces["block2"].group.contains(elements["block2"])
    assert logit_change(model, variables, spec, elements, X) > 1e-3


def test_batch_norm_rejects_general_matrices():
    """Without BatchNorm the first block of a linear network admits GL_n; the
    same element cannot pass a BatchNorm."""
    plain = _model("identity", batch_norm=False)
    element = activation_group("identity").sample(jax.random.key(0), 2, jnp.float64)
    elements = symmetry.identity(plain.symmetry_spec(), jnp.float64)
    elements["block0"] = element
    assert_action_invariant(plain, init(plain, X), X, elements=elements)

    with_bn = _model("identity")
    with pytest.raises(ValueError, match="monomial"):
        symmetry.act(with_bn.symmetry_spec(), init(with_bn, X), elements)


def test_symmetry_spec_on_unbound_module_lists_every_variable():
    model = _model()
    spec = model.symmetry_spec()
    assert spec.layers == {name: name for name in model.layers}
    variables = init(model, X)
    leaves = jax.tree_util.tree_leaves_with_path(variables)
    assert len(leaves) == len(spec.axes)
