"""Tests for symjax/models/common.py and symjax/models/__init__.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symjax.groups import Monomial, activation_group
from symjax.models import MODELS, ConvNeXt, Myrtle, ResNet, config_keys, get_model
from symjax.models.common import check_cut, compatible_group, freeze_params

# (activation, params) -> kinds for (monomial, nonnegative_phi, linear,
# monomial and linear).
KINDS = {
    ("identity", ()): (
        "nonzero_monomial",
        "positive_monomial",
        "general_linear",
        "nonzero_monomial",
    ),
    ("relu", ()): ("positive_monomial",) * 4,
    ("leaky_relu", (("negative_slope", -1.0),)): (
        "nonzero_monomial",
        "nonzero_monomial",
        "positive_monomial",
        "positive_monomial",
    ),
    ("sigmoid", ()): ("permutation",) * 4,
    ("rbf", ()): (
        "signed_permutation",
        "signed_permutation",
        "permutation",
        "permutation",
    ),
    ("power", (("degree", 2),)): (
        "nonzero_monomial",
        "nonzero_monomial",
        "permutation",
        "permutation",
    ),
    ("power", (("degree", 3),)): (
        "nonzero_monomial",
        "positive_monomial",
        "signed_permutation",
        "signed_permutation",
    ),
}
FLAGS = (
    {"monomial": True},
    {"nonnegative_phi": True},
    {"linear": True},
    {"monomial": True, "linear": True},
)


@pytest.mark.parametrize("activation, params", list(KINDS))
def test_compatible_group_kinds(activation, params):
    group = activation_group(activation, **dict(params))
    kinds = tuple(compatible_group(group, **flags).kind for flags in FLAGS)
    assert kinds == KINDS[(activation, params)]
    assert compatible_group(group) is group


@pytest.mark.parametrize("activation, params", list(KINDS))
def test_compatible_group_elements_have_the_required_properties(activation, params):
    """Sampled elements of the restricted groups satisfy each requirement; the
    kinds just above them in the table do not (checked by the kinds test)."""
    group = activation_group(activation, **dict(params))
    key = jax.random.key(0)
    for flags in FLAGS:
        sub = compatible_group(group, **flags)
        A = sub.sample(key, 6, jnp.float64)
        assert group.contains(A)
        phi = sub.phi(A)
        if flags.get("monomial") or flags.get("nonnegative_phi"):
            assert isinstance(A, Monomial)
        if flags.get("nonnegative_phi"):
            assert bool((phi.scale >= 0).all())
        if flags.get("linear"):
            np.testing.assert_allclose(phi.matrix(), A.matrix(), rtol=1e-12)


def test_check_cut():
    layers = ("a", "b", "c")
    assert check_cut(layers, None, None) == (0, 2)
    assert check_cut(layers, "a", "c") == (1, 2)
    assert check_cut(layers, "c", None) == (3, 2)
    assert check_cut(layers, None, "a") == (0, 0)
    with pytest.raises(ValueError, match="not a cut point"):
        check_cut(layers, "z", None)
    with pytest.raises(ValueError, match="does not come after"):
        check_cut(layers, "b", "b")


def test_freeze_params():
    assert freeze_params({"degree": 3, "a": 1}) == (("a", 1), ("degree", 3))
    assert freeze_params((("degree", 3),)) == (("degree", 3),)
    with pytest.raises(TypeError, match="activation_params"):
        freeze_params(3)


def test_get_model_builds_every_model_and_rejects_bad_configs():
    assert isinstance(get_model("myrtle", width=8), Myrtle)
    assert isinstance(get_model("resnet20", width_multiplier=0.5), ResNet)
    assert isinstance(get_model("convnext", depths=[1, 1]), ConvNeXt)
    leaky = get_model(
        "mlp",
        widths=[4],
        activation="leaky_relu",
        activation_params={"negative_slope": 0.1},
    )
    assert leaky.activation_params == (("negative_slope", 0.1),)
    hash(leaky)  # jit needs hashable modules
    assert set(MODELS) == {"mlp", "myrtle", "resnet20", "convnext"}
    with pytest.raises(ValueError, match="Unknown model"):
        get_model("vgg")
    with pytest.raises(ValueError, match="Unknown configuration keys"):
        get_model("myrtle", widht=8)
    with pytest.raises(ValueError, match="blocks_per_stage"):
        get_model("resnet20", blocks_per_stage=5)
    assert "blocks_per_stage" not in config_keys("resnet20")


@pytest.mark.parametrize(
    "name, config, shape",
    [
        ("mlp", {"widths": (3, 2)}, (2, 4)),
        ("myrtle", {"width": 1}, (2, 16, 16, 3)),
        ("resnet20", {"width_multiplier": 0.125}, (2, 4, 4, 3)),
        ("convnext", {"width": 2, "depths": (1, 1), "kernel_size": 3}, (2, 8, 8, 3)),
    ],
)
def test_unbound_interface(name, config, shape):
    """``layers`` and ``symmetry_spec`` need no binding, and the spec lists every
    variable with one entry per axis."""
    model = get_model(name, **config)
    spec = model.symmetry_spec()
    assert set(model.layers) <= set(spec.layers)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))
    flat = {
        "/".join(str(k.key) for k in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables)
    }
    assert set(flat) == set(spec.axes)
    for path, leaf in flat.items():
        assert len(spec.axes[path]) == leaf.ndim, path
        for entry, size in zip(spec.axes[path], leaf.shape):
            if entry is not None:
                assert spec.spaces[entry[0]].size == size, path
