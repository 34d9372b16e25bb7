"""Tests for symjax/models/convnext.py: cut points and LayerNorm-limited symmetry."""

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
from symjax.models import ConvNeXt

# Patch 2 turns 8x8 inputs into 4x4; stages of 4 and 8 channels.
X = inputs((3, 8, 8, 3))


@pytest.fixture(scope="module")
def net():
    model = ConvNeXt(
        width=4,
        depths=(1, 2),
        kernel_size=3,
        expansion=2,
        layer_scale_init=1.0,
        num_classes=4,
        dtype=jnp.float64,
        param_dtype=jnp.float64,
    )
    variables = init(model, X)
    spec = model.symmetry_spec()
    return model, variables, spec, symmetry.sample(spec, jax.random.key(0), jnp.float64)


def test_layers_and_shapes(net):
    model, variables, spec, _ = net
    assert model.layers == ("stage0.block0", "stage1.block0", "stage1.block1")
    assert model.apply(variables, X, stop="stage0.block0").shape == (3, 4, 4, 4)
    assert model.apply(variables, X, stop="stage1.block1").shape == (3, 2, 2, 8)
    assert variables["params"]["stage0_block0_dwconv"]["kernel"].shape == (3, 3, 1, 4)
    inner = {f"{layer}.inner" for layer in model.layers}
    assert set(spec.layers) == set(model.layers) | inner
    assert spec.spaces["stage1.block0.inner"].size == 16


def test_cuts_compose(net):
    model, variables, _, _ = net
    assert_cuts_compose(model, variables, X)


def test_action_preserves_function_and_maps_features(net):
    model, variables, spec, elements = net
    assert {s.group.kind for s in spec.spaces.values()} == {"permutation"}
    assert_action_invariant(model, variables, X, elements=elements)


def _scaled(elements, spec, scales):
    """The sampled permutations with the given ``[n]`` scales on the streams."""
    out = dict(elements)
    for name in ("stage0", "stage1"):
        n = spec.spaces[name].size
        out[name] = Monomial(elements[name].perm, scales(n))
    return out


def test_shared_positive_scale_is_a_symmetry_up_to_layer_norm_epsilon(net):
    """LayerNorm is invariant to one positive factor shared by all channels up to
    its epsilon (1e-6 here, against unit-order variances), which is why the spec
    leaves the factor out; per-channel scales (next test) are far from it."""
    model, variables, spec, elements = net
    shared = _scaled(elements, spec, lambda n: jnp.full((n,), 2.5, jnp.float64))
    change = logit_change(model, variables, spec, shared, X)
    assert RTOL < change < 1e-4


def test_per_channel_scales_on_the_stream_break_equality(net):
    """LayerNorm mixes the channels, so per-channel scales are not a symmetry."""
    model, variables, spec, elements = net
    diag = _scaled(elements, spec, lambda n: jnp.linspace(0.5, 2.0, n))
    assert logit_change(model, variables, spec, diag, X) > 1e-3


def test_untied_stream_breaks_equality(net):
    """Acting on stage 1's second block with a different permutation than the
    rest of the stream breaks the residual sum."""
    model, variables, spec, elements = net
    axes = {
        path: tuple(
            ("other", e[1]) if e is not None and e[0] == "stage1" else e
            for e in entries
        )
        if path.startswith("params/stage1_block1_pw1")
        else entries
        for path, entries in spec.axes.items()
    }
    spaces = {**spec.spaces, "other": spec.spaces["stage1"]}
    untied = symmetry.SymmetrySpec(spaces, axes, spec.layers)
    n = spec.spaces["stage1"].size
    other = Monomial(jnp.roll(elements["stage1"].perm, 1), jnp.ones((n,)))
    assert (
        logit_change(model, variables, untied, {**elements, "other": other}, X) > 1e-3
    )


def test_layer_scale_can_be_dropped():
    model = ConvNeXt(
        width=4,
        depths=(1, 2),
        kernel_size=3,
        expansion=2,
        layer_scale_init=None,
        num_classes=4,
        dtype=jnp.float64,
        param_dtype=jnp.float64,
    )
    spec = model.symmetry_spec()
    assert not any("layer_scale" in path for path in spec.axes)
    variables = init(model, X)
    assert len(jax.tree_util.tree_leaves(variables)) == len(spec.axes)
    np.testing.assert_allclose(
        model.apply(
            variables,
            model.apply(variables, X, stop="stage0.block0"),
            start="stage0.block0",
        ),
        model.apply(variables, X),
        rtol=RTOL,
    )
