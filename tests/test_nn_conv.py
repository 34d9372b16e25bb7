"""The "im2col" convolution computes XLA's convolution and its gradients.

float64 throughout: both implementations compute the same sums in different
orders, so they agree to a few float64 ulps; 1e-10 leaves ample room.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from symjax.nn import conv

RTOL = ATOL = 1e-10
NHWC = ("NHWC", "HWIO", "NHWC")

CASES = [
    ((1, 1), "SAME", 3),
    ((2, 2), "SAME", 3),
    ((2, 2), "VALID", 1),
    ((1, 1), ((2, 0), (1, 3)), 3),
]


def _normal(seed, *shapes):
    """float64 standard normal arrays from NumPy (no JAX PRNG to compile)."""
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(shape)) for shape in shapes]


def _value_and_grads(impl, strides, padding, x, w):
    def loss(x, w):
        y = conv.conv_general_dilated(
            x, w, strides, padding, dimension_numbers=NHWC, impl=impl
        )
        return jnp.sum(jnp.sin(y))

    return jax.value_and_grad(loss, argnums=(0, 1))(x, w)


def _assert_trees_close(got, want):
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("strides,padding,size", CASES)
def test_value_and_gradients_match_xla(strides, padding, size):
    x, w = _normal(0, (2, 9, 7, 5), (size, size, 5, 4))

    @jax.jit
    def both(x, w):
        return [_value_and_grads(i, strides, padding, x, w) for i in ("xla", "im2col")]

    want, got = both(x, w)
    _assert_trees_close(got, want)


def test_vmap_rules_match_xla():
    # Batched kernel and input (members apart), batched input only (folded into
    # the examples), batched kernel only (kernels side by side).
    x, w = _normal(1, (3, 2, 9, 7, 5), (3, 3, 3, 5, 4))
    strides, padding = (2, 1), ((2, 0), (1, 3))

    @jax.jit
    def all_rules(x, w):
        out = []
        for impl in ("xla", "im2col"):
            fn = functools.partial(_value_and_grads, impl, strides, padding)
            out.append(
                [
                    jax.vmap(fn)(x, w),
                    jax.vmap(fn, in_axes=(0, None))(x, w[0]),
                    jax.vmap(fn, in_axes=(None, 0))(x[0], w),
                ]
            )
        return out

    want, got = all_rules(x, w)
    _assert_trees_close(got, want)


def test_nested_vmap_matches_xla():
    # Seeds outside, a second batch axis inside: the vmap rule recurses.
    x, w = _normal(2, (2, 3, 4, 6, 6, 2), (2, 3, 3, 2, 3))

    def grads(impl):
        def loss(x, w):
            y = conv.conv_general_dilated(
                x, w, (1, 1), "SAME", None, None, NHWC, impl=impl
            )
            return jnp.sum(y**2)

        inner = jax.vmap(jax.grad(loss, argnums=1), in_axes=(0, None))
        return jax.jit(jax.vmap(inner))(x, w)

    np.testing.assert_allclose(grads("im2col"), grads("xla"), rtol=RTOL, atol=ATOL)


def test_unsupported_calls_fall_back_to_xla():
    x, w = _normal(3, (2, 7, 7, 4), (3, 3, 2, 4))
    kwargs = dict(dimension_numbers=NHWC, feature_group_count=2)
    want = lax.conv_general_dilated(x, w, (1, 1), "SAME", **kwargs)
    got = conv.conv_general_dilated(x, w, (1, 1), "SAME", **kwargs, impl="im2col")
    np.testing.assert_array_equal(got, want)
    jaxpr = jax.make_jaxpr(
        lambda x, w: conv.conv_general_dilated(
            x, w, (1, 1), "SAME", **kwargs, impl="im2col"
        )
    )(x, w)
    assert "custom_vjp" not in str(jaxpr)


def test_use_conv_impl_reroutes_flax_conv():
    model = nn.Conv(3, (3, 3), name="conv")
    x, kernel, bias = _normal(4, (2, 6, 6, 2), (3, 3, 2, 3), (3,))
    variables = {"params": {"kernel": kernel, "bias": bias}}

    def loss(variables, impl):
        with conv.use_conv_impl(impl):
            return jnp.sum(jnp.tanh(model.apply(variables, x)))

    for impl, routed in (("im2col", True), ("xla", False)):
        jaxpr = str(jax.make_jaxpr(lambda v, impl=impl: loss(v, impl))(variables))
        assert ("custom_vjp" in jaxpr) == routed
    want = jax.grad(loss)(variables, "xla")
    got = jax.grad(loss)(variables, "im2col")
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL)
    # Outside the block the module is plain again.
    assert "custom_vjp" not in str(jax.make_jaxpr(model.apply)(variables, x))


def test_resolve_conv_impl(monkeypatch):
    monkeypatch.delenv(conv.ENV_VAR, raising=False)
    assert conv.resolve_conv_impl(None) == "xla"
    monkeypatch.setenv(conv.ENV_VAR, "im2col")
    assert conv.resolve_conv_impl(None) == "im2col"
    expected = "im2col" if jax.default_backend() == "cpu" else "xla"
    assert conv.resolve_conv_impl("auto") == expected
    with pytest.raises(ValueError, match="conv impl"):
        conv.resolve_conv_impl("winograd")
