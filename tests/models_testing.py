"""Checks shared by the model tests (imported by tests/test_models_*.py)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from symjax import symmetry

# float64 throughout: the identities below are exact up to rounding, so 1e-9 leaves
# six orders of magnitude of room above float64 round-off for these tiny networks.
RTOL = ATOL = 1e-9


def init(model, x, seed=0):
    """Random float64 variables with the structure ``model.init`` gives.

    The structure comes from ``jax.eval_shape(model.init, ...)`` and the values
    from NumPy, which avoids compiling JAX's random number generators for every
    parameter shape (the slow part of these tests on a shared CPU). Kernels are
    ``N(0, 1 / fan_in)``; BatchNorm/LayerNorm scales and layer scales
    ``1 + 0.3 N(0, 1)``; running variances ``exp(0.5 N(0, 1))``; biases and running
    means ``0.3 N(0, 1)``, so that no identity holds by accident (Flax initialises
    means and biases to 0, variances and scales to 1).
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    flat = traverse_util.flatten_dict(shapes, sep="/")
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in sorted(flat.items()):
        z = rng.normal(size=leaf.shape)
        if path.endswith("/kernel"):
            value = z / np.sqrt(np.prod(leaf.shape[:-1]))
        elif path.endswith("/var"):
            value = np.exp(0.5 * z)
        elif path.endswith("/scale") or path.endswith("_layer_scale"):
            value = 1.0 + 0.3 * z
        else:
            value = 0.3 * z
        out[path] = jnp.asarray(value, jnp.float64)
    return traverse_util.unflatten_dict(out, sep="/")


def inputs(shape, seed=42):
    """Standard normal float64 inputs."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float64)


def intermediates(model, variables, x):
    """Logits and the sown activation features ``{layer: [N, ..., C]}``."""
    logits, state = model.apply(variables, x, mutable=["intermediates"])
    feats = {k: v[0] for k, v in state["intermediates"].items()}
    return logits, feats


def assert_cuts_compose(model, variables, x):
    """``f_{>l}(f_{<=l}(x)) == f(x)`` and ``f_{<=l}`` matches the sown features."""
    logits, feats = intermediates(model, variables, x)
    for layer in model.layers:
        h = model.apply(variables, x, stop=layer)
        np.testing.assert_allclose(h, feats[layer], rtol=RTOL, atol=ATOL)
        out = model.apply(variables, h, start=layer)
        np.testing.assert_allclose(out, logits, rtol=RTOL, atol=ATOL)


def assert_action_invariant(model, variables, x, key=7, elements=None):
    """The action leaves the function unchanged and maps every activation
    layer's features by ``phi(A)`` (eq. 3.5). Returns the elements used."""
    spec = model.symmetry_spec()
    if elements is None:
        elements = symmetry.sample(spec, jax.random.key(key), jnp.float64)
    moved = symmetry.act(spec, variables, elements)
    assert max_change(variables, moved) > 1e-2, "the action changed nothing"

    logits, feats = intermediates(model, variables, x)
    logits2, feats2 = intermediates(model, moved, x)
    np.testing.assert_allclose(logits2, logits, rtol=RTOL, atol=ATOL)
    assert set(feats) == set(spec.layers)
    for layer in spec.layers:
        expected = symmetry.act_on_features(spec, layer, feats[layer], elements)
        np.testing.assert_allclose(feats2[layer], expected, rtol=RTOL, atol=ATOL)
    return elements


def max_change(a, b) -> float:
    """Largest absolute difference between two variable trees."""
    diffs = jax.tree_util.tree_map(lambda u, v: jnp.max(jnp.abs(u - v)), a, b)
    return float(max(jax.tree_util.tree_leaves(diffs)))


def logit_change(model, variables, spec, elements, x) -> float:
    """Largest change of the logits under ``act(spec, variables, elements)``."""
    moved = symmetry.act(spec, variables, elements)
    return float(jnp.max(jnp.abs(model.apply(moved, x) - model.apply(variables, x))))
