"""The weight-space action (Proposition 3.4, eq. 3.5) on small networks defined here.

The library's own models are tested against the action in tests/test_models_*.py.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symjax import symmetry
from symjax.groups import Dense, activation_group
from symjax.symmetry import Space, SymmetrySpec

TOL = dict(rtol=1e-9, atol=1e-9)  # float64 throughout


class MLP(nn.Module):
    widths: tuple
    sigma: object

    @nn.compact
    def __call__(self, x):
        feats = []
        for i, w in enumerate(self.widths):
            x = self.sigma(nn.Dense(w, name=f"dense{i}", param_dtype=jnp.float64)(x))
            feats.append(x)
        return nn.Dense(3, name="head", param_dtype=jnp.float64)(x), feats


def mlp_spec(widths, group):
    spaces = {f"h{i}": Space(w, group) for i, w in enumerate(widths)}
    axes = {}
    for i in range(len(widths)):
        prev = None if i == 0 else (f"h{i - 1}", "in")
        axes[f"params/dense{i}/kernel"] = (prev, (f"h{i}", "out"))
        axes[f"params/dense{i}/bias"] = ((f"h{i}", "out"),)
    axes["params/head/kernel"] = ((f"h{len(widths) - 1}", "in"), None)
    axes["params/head/bias"] = (None,)
    return SymmetrySpec(spaces, axes, {f"h{i}": f"h{i}" for i in range(len(widths))})


TABLE1 = [
    ("identity", {}),
    ("sigmoid", {}),
    ("relu", {}),
    ("leaky_relu", {"negative_slope": 0.3}),
    ("rbf", {}),
    ("power", {"degree": 3}),
]


def _setup(name, params, widths=(5, 7, 4)):
    g = activation_group(name, **params)
    model = MLP(widths, g.sigma)
    x = jax.random.normal(jax.random.key(0), (16, 4), jnp.float64)
    variables = model.init(jax.random.key(1), x)
    return g, model, x, variables, mlp_spec(widths, g)


@pytest.mark.parametrize("name,params", TABLE1, ids=[t[0] for t in TABLE1])
def test_proposition_3_4_mlp(name, params):
    g, model, x, variables, spec = _setup(name, params)
    elements = symmetry.sample(spec, jax.random.key(2), jnp.float64)
    moved = symmetry.act(spec, variables, elements)
    y, feats = model.apply(variables, x)
    y2, feats2 = model.apply(moved, x)
    np.testing.assert_allclose(y2, y, **TOL)
    for i, (f, f2) in enumerate(zip(feats, feats2, strict=True)):
        # eq. 3.5: the features move by phi(A_i) ...
        np.testing.assert_allclose(
            f2, symmetry.act_on_features(spec, f"h{i}", f, elements), **TOL
        )
        # ... and they really move (the transformation is not trivial).
        assert np.abs(np.asarray(f2 - f)).max() > 1e-3


def test_negative_control_orthogonal_on_relu_changes_function():
    g, model, x, variables, spec = _setup("relu", {})
    elements = symmetry.identity(spec, jnp.float64)
    Q = jax.random.orthogonal(jax.random.key(5), 7, dtype=jnp.float64)
    elements["h1"] = Dense(Q)
    open_spec = SymmetrySpec(
        {**spec.spaces, "h1": Space(7, activation_group("identity"))},
        spec.axes,
        spec.layers,
    )
    moved = symmetry.act(open_spec, variables, elements)
    y, _ = model.apply(variables, x)
    y2, _ = model.apply(moved, x)
    assert np.abs(np.asarray(y2 - y)).max() > 1e-2


def test_action_laws_inverse_and_composition():
    g, model, x, variables, spec = _setup("leaky_relu", {"negative_slope": 0.1})
    a = symmetry.sample(spec, jax.random.key(3), jnp.float64)
    b = symmetry.sample(spec, jax.random.key(4), jnp.float64)
    back = symmetry.act(spec, symmetry.act(spec, variables, a), symmetry.inverse(a))
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, **TOL), back, variables)
    two = symmetry.act(spec, symmetry.act(spec, variables, b), a)
    one = symmetry.act(spec, variables, symmetry.compose(a, b))
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, **TOL), two, one)


def test_jit_and_vmap_agree_with_eager():
    g, model, x, variables, spec = _setup("relu", {})
    keys = jax.random.split(jax.random.key(7), 8)
    elements = jax.vmap(lambda k: symmetry.sample(spec, k, jnp.float64))(keys)
    act = jax.jit(jax.vmap(lambda e: symmetry.act(spec, variables, e)))
    batched = act(elements)
    for i in (0, 5):
        one = jax.tree.map(lambda e, i=i: e[i], elements)
        eager = symmetry.act(spec, variables, one)
        jax.tree.map(
            lambda u, v, i=i: np.testing.assert_allclose(u[i], v, **TOL), batched, eager
        )
    before = act._cache_size()
    act(jax.vmap(lambda k: symmetry.sample(spec, k, jnp.float64))(keys[::-1]))
    assert act._cache_size() == before  # a second call does not recompile


def test_incomplete_spec_is_an_error():
    g, model, x, variables, spec = _setup("relu", {})
    axes = dict(spec.axes)
    del axes["params/head/bias"]
    bad = SymmetrySpec(spec.spaces, axes, spec.layers)
    with pytest.raises(ValueError, match="params/head/bias"):
        symmetry.act(bad, variables, symmetry.identity(spec))


def test_a_batch_of_elements_needs_vmap():
    g, model, x, variables, spec = _setup("relu", {})
    keys = jax.random.split(jax.random.key(0), 3)
    batch = jax.vmap(lambda k: symmetry.sample(spec, k, jnp.float64))(keys)
    with pytest.raises(ValueError, match="vmap"):
        symmetry.act(spec, variables, batch)
    moved = jax.vmap(lambda A: symmetry.act(spec, variables, A))(batch)
    assert jax.tree.leaves(moved)[0].shape[0] == 3


class ConvBN(nn.Module):
    """conv -> BN -> ReLU -> conv -> BN -> ReLU -> max pool -> dense (no conv bias)."""

    @nn.compact
    def __call__(self, x, train=False):
        kw = dict(use_bias=False, param_dtype=jnp.float64)
        bn = dict(use_running_average=not train, param_dtype=jnp.float64)
        x = nn.relu(
            nn.BatchNorm(name="bn0", **bn)(nn.Conv(6, (3, 3), name="c0", **kw)(x))
        )
        h0 = x
        x = nn.relu(
            nn.BatchNorm(name="bn1", **bn)(nn.Conv(5, (3, 3), name="c1", **kw)(x))
        )
        x = x.max(axis=(1, 2))
        return nn.Dense(3, name="head", param_dtype=jnp.float64)(x), (h0, x)


def convbn_spec():
    g = activation_group("relu")
    spaces = {"a": Space(6, g), "b": Space(5, g)}
    axes = {
        "params/c0/kernel": (None, None, None, ("a", "perm")),
        "params/bn0/scale": (("a", "out"),),
        "params/bn0/bias": (("a", "out"),),
        "batch_stats/bn0/mean": (("a", "perm"),),
        "batch_stats/bn0/var": (("a", "perm"),),
        "params/c1/kernel": (None, None, ("a", "in"), ("b", "perm")),
        "params/bn1/scale": (("b", "out"),),
        "params/bn1/bias": (("b", "out"),),
        "batch_stats/bn1/mean": (("b", "perm"),),
        "batch_stats/bn1/var": (("b", "perm"),),
        "params/head/kernel": (("b", "in"), None),
        "params/head/bias": (None,),
    }
    return SymmetrySpec(spaces, axes, {"a": "a", "b": "b"})


def test_conv_batchnorm_inference_mode_is_invariant():
    model = ConvBN()
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3), jnp.float64)
    variables = model.init(jax.random.key(1), x)
    # Non-trivial running statistics, as after training.
    _, upd = model.apply(variables, 3.0 * x + 1.0, train=True, mutable=["batch_stats"])
    variables = {"params": variables["params"], **upd}
    spec = convbn_spec()
    elements = symmetry.sample(spec, jax.random.key(2), jnp.float64)
    moved = symmetry.act(spec, variables, elements)
    (y, (h0, h1)), (y2, (g0, g1)) = model.apply(variables, x), model.apply(moved, x)
    np.testing.assert_allclose(y2, y, **TOL)
    np.testing.assert_allclose(
        g0, symmetry.act_on_features(spec, "a", h0, elements), **TOL
    )
    np.testing.assert_allclose(
        g1, symmetry.act_on_features(spec, "b", h1, elements), **TOL
    )
    # The scales go to BatchNorm, not to the kernel feeding it.
    scales = np.asarray(elements["a"].scale)
    np.testing.assert_allclose(
        moved["params"]["bn0"]["scale"],
        scales * np.asarray(variables["params"]["bn0"]["scale"])[elements["a"].perm],
        **TOL,
    )


def test_batchnorm_rejects_general_linear():
    spec = convbn_spec()
    spec = SymmetrySpec(
        {**spec.spaces, "a": Space(6, activation_group("identity"))},
        spec.axes,
        spec.layers,
    )
    x = jnp.zeros((1, 8, 8, 3), jnp.float64)
    variables = ConvBN().init(jax.random.key(1), x)
    elements = symmetry.sample(spec, jax.random.key(0), jnp.float64)
    with pytest.raises(ValueError, match="BatchNorm"):
        symmetry.act(spec, variables, elements)


class ResMLP(nn.Module):
    """A residual stream widened by a zero-padded shortcut from 4 to 8 channels."""

    @nn.compact
    def __call__(self, x):
        d = dict(param_dtype=jnp.float64)
        h = nn.relu(nn.Dense(4, name="stem", **d)(x))
        h = nn.relu(
            h + nn.Dense(4, name="b0", **d)(nn.relu(nn.Dense(6, name="a0", **d)(h)))
        )
        wide = jnp.pad(h, ((0, 0), (2, 2)))
        h = nn.relu(
            wide + nn.Dense(8, name="b1", **d)(nn.relu(nn.Dense(5, name="a1", **d)(h)))
        )
        h = nn.relu(
            h + nn.Dense(8, name="b2", **d)(nn.relu(nn.Dense(3, name="a2", **d)(h)))
        )
        return nn.Dense(2, name="head", **d)(h), h


def resmlp_spec(tied=True):
    g = activation_group("relu")
    spaces = {
        "s1": Space(4, g),
        "s2": Space(8, g, embed=("s1", 2) if tied else None),
        "i0": Space(6, g),
        "i1": Space(5, g),
        "i2": Space(3, g),
    }
    axes = {
        "params/stem/kernel": (None, ("s1", "out")),
        "params/stem/bias": (("s1", "out"),),
        "params/head/kernel": (("s2", "in"), None),
        "params/head/bias": (None,),
    }
    for i, (src, dst) in enumerate([("s1", "s1"), ("s1", "s2"), ("s2", "s2")]):
        axes[f"params/a{i}/kernel"] = ((src, "in"), (f"i{i}", "out"))
        axes[f"params/a{i}/bias"] = ((f"i{i}", "out"),)
        axes[f"params/b{i}/kernel"] = ((f"i{i}", "in"), (dst, "out"))
        axes[f"params/b{i}/bias"] = ((dst, "out"),)
    return SymmetrySpec(spaces, axes, {"out": "s2"})


def test_residual_stream_with_tied_elements():
    model = ResMLP()
    x = jax.random.normal(jax.random.key(0), (16, 3), jnp.float64)
    variables = model.init(jax.random.key(1), x)
    spec = resmlp_spec()
    elements = symmetry.sample(spec, jax.random.key(2), jnp.float64)
    symmetry.check_elements(spec, elements)
    moved = symmetry.act(spec, variables, elements)
    (y, h), (y2, h2) = model.apply(variables, x), model.apply(moved, x)
    np.testing.assert_allclose(y2, y, **TOL)
    np.testing.assert_allclose(
        h2, symmetry.act_on_features(spec, "out", h, elements), **TOL
    )


def test_untied_residual_elements_break_equality():
    model = ResMLP()
    x = jax.random.normal(jax.random.key(0), (16, 3), jnp.float64)
    variables = model.init(jax.random.key(1), x)
    spec = resmlp_spec(tied=False)
    elements = symmetry.sample(spec, jax.random.key(2), jnp.float64)
    with pytest.raises(ValueError, match="tied"):
        symmetry.check_elements(resmlp_spec(tied=True), elements)
    moved = symmetry.act(spec, variables, elements)
    y, y2 = model.apply(variables, x)[0], model.apply(moved, x)[0]
    assert np.abs(np.asarray(y2 - y)).max() > 1e-3
