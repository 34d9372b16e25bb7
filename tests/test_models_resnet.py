"""Tests for symjax/models/resnet.py: cut points and tied residual symmetries."""

import dataclasses

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
from symjax.groups import Monomial
from symjax.models import ResNet
from symjax.models.resnet import pad_shortcut
from symjax.symmetry import Space, SymmetrySpec

# Width multiplier 1/4: stages of 4, 8 and 16 channels; 8x8 inputs.
X = inputs((3, 8, 8, 3))


def _model(activation="relu", params=None, residual_activation=True):
    return ResNet(
        width_multiplier=0.25,
        num_classes=4,
        activation=activation,
        activation_params=params or {},
        residual_activation=residual_activation,
        dtype=jnp.float64,
        param_dtype=jnp.float64,
    )


@pytest.fixture(scope="module")
def relu_net():
    model = _model()
    variables = init(model, X)
    spec = model.symmetry_spec()
    return (
        model,
        variables,
        spec,
        symmetry.sample(spec, jax.random.key(0), jnp.float64),
    )


def test_layers_and_shapes(relu_net):
    model, variables, spec, _ = relu_net
    blocks = [f"stage{s}.block{b}" for s in range(3) for b in range(3)]
    assert model.layers == ("stem", *blocks)
    assert model.widths == (4, 8, 16)
    assert model.apply(variables, X, stop="stem").shape == (3, 8, 8, 4)
    assert model.apply(variables, X, stop="stage1.block0").shape == (3, 4, 4, 8)
    assert model.apply(variables, X, stop="stage2.block2").shape == (3, 2, 2, 16)
    # Conv layers: stem + 2 per block; ResNet20 has 19 of them and a dense head.
    convs = [k for k in variables["params"] if "conv" in k]
    assert len(convs) == 19
    inner = {f"{b}.inner" for b in blocks}
    assert set(spec.layers) == set(model.layers) | inner


def test_pad_shortcut_puts_old_channels_in_the_middle():
    h = inputs((2, 4, 4, 3))
    out = pad_shortcut(h, 7)
    assert out.shape == (2, 2, 2, 7)
    np.testing.assert_array_equal(out[..., 2:5], h[:, ::2, ::2, :])
    assert float(jnp.abs(out[..., :2]).max()) == 0.0
    assert float(jnp.abs(out[..., 5:]).max()) == 0.0


@pytest.mark.parametrize("residual_activation", [True, False])
def test_cuts_compose(residual_activation):
    model = _model(residual_activation=residual_activation)
    assert_cuts_compose(model, init(model, X), X)


def test_cut_errors(relu_net):
    model, variables, _, _ = relu_net
    with pytest.raises(ValueError, match="not a cut point"):
        model.apply(variables, X, stop="stage0.block0.inner")
    with pytest.raises(ValueError, match="does not come after"):
        model.apply(variables, X, start="stage1.block0", stop="stem")


def test_tied_action_preserves_function_and_maps_features(relu_net):
    model, variables, _, elements = relu_net
    assert_action_invariant(model, variables, X, elements=elements)


@pytest.mark.parametrize(
    "activation, params, residual_activation, stream_kind",
    [
        ("leaky_relu", {"negative_slope": 0.1}, True, "positive_monomial"),
        ("relu", {}, False, "positive_monomial"),
        ("rbf", {}, True, "permutation"),
        ("identity", {}, False, "nonzero_monomial"),
    ],
)
def test_variants_preserve_function(
    activation, params, residual_activation, stream_kind
):
    model = _model(activation, params, residual_activation)
    spec = model.symmetry_spec()
    assert spec.spaces["stage1"].group.kind == stream_kind
    assert spec.spaces["stage1"].embed == ("stage0", 2)
    assert spec.spaces["stage2"].embed == ("stage1", 4)
    assert_action_invariant(model, init(model, X), X)


def test_untied_stream_elements_break_equality(relu_net):
    """Give the second block of stage 0 its own element on the stream: the
    shortcut then adds features transformed by different elements."""
    model, variables, spec, elements = relu_net

    def retarget(entries):
        return tuple(
            ("untied", e[1]) if e is not None and e[0] == "stage0" else e
            for e in entries
        )

    axes = {
        path: retarget(entries)
        if ("stage0_block1_conv1" in path or "stage0_block1_bn1" in path)
        else entries
        for path, entries in spec.axes.items()
    }
    spaces = dict(spec.spaces)
    spaces["untied"] = dataclasses.replace(spec.spaces["stage0"], embed=None)
    untied = SymmetrySpec(spaces, axes, spec.layers)
    n = spec.spaces["stage0"].size
    other = Monomial(
        jnp.roll(jnp.arange(n), 1), jnp.linspace(0.5, 2.0, n, dtype=jnp.float64)
    )

    # Tied again (the same element on both), the function is unchanged.
    tied = {**elements, "untied": elements["stage0"]}
    assert logit_change(model, variables, untied, tied, X) < RTOL
    assert (
        logit_change(model, variables, untied, {**elements, "untied": other}, X) > 1e-3
    )


def test_embedding_mismatch_breaks_equality(relu_net):
    """Stage 1's element must carry stage 0's on the channels the option-A
    shortcut fills; shifting that block by one channel breaks the function."""
    model, variables, spec, elements = relu_net
    A = elements["stage1"]
    shifted = Monomial(jnp.roll(A.perm, 1), jnp.roll(A.scale, 1))
    bad = {**elements, "stage1": shifted}
    with pytest.raises(ValueError, match="residual connection"):
        symmetry.check_elements(spec, bad)
    assert logit_change(model, variables, spec, bad, X) > 1e-3


def test_space_sizes(relu_net):
    _, _, spec, _ = relu_net
    assert spec.spaces["stage0"] == Space(4, spec.spaces["stage0"].group)
    assert spec.spaces["stage2.block1.inner"].size == 16
