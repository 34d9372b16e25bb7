"""Intertwiner groups of coordinatewise activations (paper Section 3, Table 1).

For a coordinatewise activation ``sigma`` acting on ``R^n``, the intertwiner group
``G_sigma_n`` is the set of invertible ``A`` for which some invertible ``B`` satisfies
``sigma(A x) = B sigma(x)`` for all ``x``. Lemma 3.1 shows that ``B`` is then unique,

.. math:: \\phi_\\sigma(A) = \\sigma(A)\\, \\sigma(I)^{-1},

with ``sigma`` applied entrywise to the matrices, and that ``phi_sigma`` is a group
homomorphism on ``G_sigma_n``. Table 1 of the paper:

==================  ==========================================  ===============
activation          ``G_sigma_n``                               ``phi(A)``
==================  ==========================================  ===============
identity            ``GL_n``                                    ``A``
sigmoid             permutation matrices                        ``A``
ReLU                permutation x positive diagonal             ``A``
LeakyReLU (a != 1)  permutation x positive diagonal             ``A``
Gaussian RBF        permutation x (+-1) diagonal                ``|A|``
``x^d``             permutation x nonzero diagonal              ``A^{o d}``
==================  ==========================================  ===============

Every group but ``GL_n`` consists of monomial matrices, which are stored in the
structured form :class:`Monomial` (a permutation and a diagonal) so that large layers
never need dense ``n x n`` matrices. ``GL_n`` elements are :class:`Dense`.

Convention: a :class:`Monomial` with ``perm`` and ``scale`` is the matrix ``A`` with
``A[i, perm[i]] = scale[i]``, so that on channels-last features
``(A h)[..., i] = scale[i] * h[..., perm[i]]``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _along(v: Array, ndim: int, axis: int) -> Array:
    """Reshapes a vector ``[n]`` to broadcast along ``axis`` of an ``ndim`` array."""
    shape = [1] * ndim
    shape[axis] = v.shape[0]
    return v.reshape(shape)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Monomial:
    """A monomial matrix ``A = diag(scale) P`` in structured form.

    Attributes:
      perm: ``[n]`` integer permutation; ``A[i, perm[i]] = scale[i]``.
      scale: ``[n]`` nonzero diagonal entries.

    Both fields are pytree leaves, so elements can be jitted, vmapped and stacked;
    a batch of elements has ``perm`` ``[k, n]`` and ``scale`` ``[k, n]``.
    """

    perm: Array
    scale: Array

    @property
    def size(self) -> int:
        return self.perm.shape[-1]

    @classmethod
    def identity(cls, n: int, dtype=jnp.float32) -> Monomial:
        return cls(jnp.arange(n), jnp.ones((n,), dtype))

    @classmethod
    def from_matrix(cls, A, atol: float = 1e-6) -> Monomial | None:
        """The structured form of a dense ``[n, n]`` matrix, or None if not monomial.

        Runs on the host (``numpy``); not for use under ``jit``.
        """
        A = np.asarray(A)
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be a square matrix, got shape {A.shape}.")
        nonzero = np.abs(A) > atol
        if not (nonzero.sum(0) == 1).all() or not (nonzero.sum(1) == 1).all():
            return None
        perm = nonzero.argmax(1)
        return cls(jnp.asarray(perm), jnp.asarray(A[np.arange(len(A)), perm]))

    def apply(self, x: Array, axis: int = -1) -> Array:
        """Computes ``A h`` along ``axis`` of ``x`` (``[..., n, ...]``)."""
        axis = axis % x.ndim
        return jnp.take(x, self.perm, axis=axis) * _along(self.scale, x.ndim, axis)

    def inverse(self) -> Monomial:
        """``A^{-1} = P^T diag(1 / scale)``."""
        inv = jnp.argsort(self.perm)
        return Monomial(inv, 1.0 / self.scale[inv])

    def inverse_transpose(self) -> Monomial:
        """``A^{-T} = diag(1 / scale) P``: same permutation, reciprocal scale."""
        return Monomial(self.perm, 1.0 / self.scale)

    def permutation(self) -> Monomial:
        """The permutation part ``P`` (unit scale)."""
        return Monomial(self.perm, jnp.ones_like(self.scale))

    def compose(self, other: Monomial) -> Monomial:
        """The product ``self @ other`` (``other`` acts first)."""
        other = as_monomial(other)
        return Monomial(other.perm[self.perm], self.scale * other.scale[self.perm])

    def map_scale(self, fn: Callable[[Array], Array]) -> Monomial:
        return Monomial(self.perm, fn(self.scale))

    def matrix(self) -> Array:
        """The dense ``[n, n]`` matrix."""
        n = self.size
        return (
            jnp.zeros((n, n), self.scale.dtype)
            .at[jnp.arange(n), self.perm]
            .set(self.scale)
        )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Dense:
    """A general invertible matrix ``A`` (``[n, n]``), for ``GL_n``."""

    A: Array

    @property
    def size(self) -> int:
        return self.A.shape[-1]

    def apply(self, x: Array, axis: int = -1) -> Array:
        """Computes ``A h`` along ``axis`` of ``x``."""
        moved = jnp.moveaxis(x, axis, -1)
        out = jnp.matmul(moved, self.A.T, precision=jax.lax.Precision.HIGHEST)
        return jnp.moveaxis(out, -1, axis)

    def inverse(self) -> Dense:
        return Dense(jnp.linalg.inv(self.A))

    def inverse_transpose(self) -> Dense:
        return Dense(jnp.linalg.inv(self.A).T)

    def permutation(self) -> Dense:
        raise ValueError(
            "A dense GL_n element has no permutation part; BatchNorm layers admit "
            "only monomial elements. Use a model whose spaces have a monomial group."
        )

    def compose(self, other) -> Dense:
        return Dense(jnp.matmul(self.A, as_dense(other).A))

    def matrix(self) -> Array:
        return self.A


Element = Monomial | Dense


def as_dense(element: Element) -> Dense:
    return element if isinstance(element, Dense) else Dense(element.matrix())


def as_monomial(element: Element) -> Monomial:
    if isinstance(element, Monomial):
        return element
    raise TypeError(
        f"Expected a Monomial element, got {type(element).__name__}; convert with "
        "Monomial.from_matrix(A) if the matrix is monomial."
    )


# ---------------------------------------------------------------------------
# Activations.

_SQRT_2PI = math.sqrt(2.0 * math.pi)


def _rbf(x):
    return jnp.exp(-0.5 * x * x) / _SQRT_2PI


_ACTIVATIONS: dict[str, Callable[..., Array]] = {
    "identity": lambda x: x,
    "relu": jax.nn.relu,
    "leaky_relu": lambda x, negative_slope=0.01: jnp.where(
        x >= 0, x, negative_slope * x
    ),
    "sigmoid": jax.nn.sigmoid,
    "rbf": _rbf,
    "power": lambda x, degree=2: x**degree,
    "tanh": jnp.tanh,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
    "softplus": jax.nn.softplus,
    "elu": jax.nn.elu,
}

_PARAMS = {"leaky_relu": "negative_slope", "power": "degree"}

# Kinds of group (sets of matrices):
#   general_linear      GL_n
#   permutation         P
#   positive_monomial   P x positive diagonal
#   signed_permutation  P x (+-1) diagonal
#   nonzero_monomial    P x nonzero diagonal
# and, separately, the rule for phi on them: "A", "abs" (|A|) or "power" (A^{o d}).
#
# Table 1 gives the first six activations. For the others the entry lists the
# monomial elements that intertwine (tested numerically in tests/test_groups.py:
# tanh is odd, so sign flips pass with phi(A) = A; GELU, SiLU, softplus and ELU
# admit neither sign flips nor rescalings). That they admit no other elements is
# not proven here.
_KIND = {
    "identity": ("general_linear", "A"),
    "relu": ("positive_monomial", "A"),
    "leaky_relu": ("positive_monomial", "A"),
    "sigmoid": ("permutation", "A"),
    "rbf": ("signed_permutation", "abs"),
    "power": ("nonzero_monomial", "power"),
    "tanh": ("signed_permutation", "A"),
    "gelu": ("permutation", "A"),
    "silu": ("permutation", "A"),
    "softplus": ("permutation", "A"),
    "elu": ("permutation", "A"),
}

_MONOMIAL_KINDS = {
    "permutation",
    "positive_monomial",
    "signed_permutation",
    "nonzero_monomial",
}
_SUBSETS = {
    "general_linear": {"general_linear"} | _MONOMIAL_KINDS,
    "nonzero_monomial": _MONOMIAL_KINDS,
    "positive_monomial": {"positive_monomial", "permutation"},
    "signed_permutation": {"signed_permutation", "permutation"},
    "permutation": {"permutation"},
}


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _sample(kind: str, key: Array, n: int, dtype) -> Element:
    kp, ks, kz = jax.random.split(key, 3)
    z = jnp.exp(jax.random.normal(kz, (n,), dtype) - 0.5)
    sign = jnp.where(jax.random.bernoulli(ks, 0.5, (n,)), 1.0, -1.0).astype(dtype)
    if kind == "general_linear":
        k1, k2 = jax.random.split(kp)
        q1 = jax.random.orthogonal(k1, n, dtype=dtype)
        q2 = jax.random.orthogonal(k2, n, dtype=dtype)
        return Dense((q1 * z[None, :]) @ q2)
    perm = jax.random.permutation(kp, n)
    scale = {
        "permutation": jnp.ones((n,), dtype),
        "positive_monomial": z,
        "signed_permutation": sign,
        "nonzero_monomial": sign * z,
    }[kind]
    return Monomial(perm, scale)


@dataclasses.dataclass(frozen=True)
class IntertwinerGroup:
    """The intertwiner group ``G_sigma_n`` of one coordinatewise activation.

    Build with :func:`activation_group`. Instances are hashable and can be static
    arguments of jitted functions.

    Attributes:
      activation: name of the activation (see :data:`ACTIVATIONS`).
      param: its parameter (LeakyReLU's negative slope, the power's degree) or None.
    """

    activation: str
    param: float | int | None = None
    subgroup: str | None = None

    def restrict(self, kind: str) -> IntertwinerGroup:
        """The subgroup of elements of ``kind`` (a layer such as BatchNorm, LayerNorm
        or max pooling may admit only part of the activation's group).

        ``phi`` keeps the activation's rule; only the set of elements shrinks.
        """
        if kind not in _SUBSETS[self._full_kind]:
            raise ValueError(
                f"{kind!r} is not a subgroup of {self._full_kind!r}; choose one of "
                f"{sorted(_SUBSETS[self._full_kind])}."
            )
        return dataclasses.replace(self, subgroup=kind)

    @property
    def kind(self) -> str:
        """The set of elements: one of the kinds listed in this module's source."""
        return self.subgroup or self._full_kind

    @property
    def _full_kind(self) -> str:
        return self._kind_and_rule[0]

    @property
    def _kind_and_rule(self) -> tuple[str, str]:
        if self.activation == "leaky_relu":
            if self.param == 1:
                return "general_linear", "A"
            if self.param == -1:
                return "nonzero_monomial", "abs"
        if self.activation == "power" and self.param == 1:
            return "general_linear", "A"
        return _KIND[self.activation]

    def sigma(self, x: Array) -> Array:
        """The activation, applied coordinatewise."""
        fn = _ACTIVATIONS[self.activation]
        if self.activation in _PARAMS:
            return fn(x, self.param)
        return fn(x)

    def describe(self) -> str:
        return {
            "general_linear": "GL_n (all invertible matrices)",
            "permutation": "permutation matrices",
            "positive_monomial": "permutation x positive diagonal",
            "signed_permutation": "permutation x (+-1) diagonal",
            "nonzero_monomial": "permutation x nonzero diagonal",
        }[self.kind]

    def phi(self, element: Element) -> Element:
        """The closed form of ``phi_sigma`` (Table 1) on a group element."""
        rule = self._kind_and_rule[1]
        if rule == "A":
            return element
        element = as_monomial(element)
        if rule == "abs":
            return element.map_scale(jnp.abs)
        return element.map_scale(lambda s: s**self.param)

    def sample(self, key: Array, n: int, dtype=jnp.float32) -> Element:
        """Draws a random element.

        Permutations are uniform. Positive scales are log-normal ``exp(z - 1/2)``
        with ``z ~ N(0, 1)``, so they have mean 1 (Section 3.3). Signs are uniform.
        ``GL_n`` elements are ``Q1 diag(exp(z - 1/2)) Q2`` with Haar-random
        orthogonal ``Q1, Q2``, which keeps them well conditioned.
        """
        return _sample(self.kind, key, n, jnp.dtype(dtype))

    def contains(self, element: Element | Array, atol: float = 1e-6) -> bool:
        """Whether ``element`` (structured, or a dense matrix) lies in the group.

        Entries of a dense matrix below ``atol`` count as zero. A ``GL_n`` member
        must be invertible to working precision: its smallest singular value must
        exceed ``atol`` times its largest (a determinant test would reject
        ``0.5 I_n`` for large ``n`` and accept nearly singular matrices).

        Runs on the host; not for use under ``jit``.
        """
        if isinstance(element, Dense):
            element = element.A
        if not isinstance(element, Monomial):
            A = np.asarray(element)
            if self.kind == "general_linear":
                return _well_conditioned(A, atol)
            element = Monomial.from_matrix(A, atol)
            if element is None:
                return False
        perm, scale = np.asarray(element.perm), np.asarray(element.scale)
        if sorted(perm.tolist()) != list(range(len(perm))):
            return False
        magnitude = np.abs(scale)
        return bool(
            {
                "general_linear": magnitude.min() > atol * magnitude.max(),
                "permutation": np.allclose(scale, 1.0, atol=atol),
                "positive_monomial": np.all(scale > atol),
                "signed_permutation": np.allclose(np.abs(scale), 1.0, atol=atol),
                "nonzero_monomial": np.all(np.abs(scale) > atol),
            }[self.kind]
        )


ACTIVATIONS = tuple(_ACTIVATIONS)


def _well_conditioned(A: np.ndarray, rtol: float) -> bool:
    """Whether ``A`` is invertible to working precision: the ratio of its smallest
    to its largest singular value exceeds ``rtol`` (a scale-free test, unlike
    ``|det A|``, which shrinks geometrically with ``n`` for well-conditioned
    matrices)."""
    s = np.linalg.svd(np.asarray(A, np.float64), compute_uv=False)
    return bool(s.size and s[-1] > rtol * s[0])


def activation_group(name: str, **params) -> IntertwinerGroup:
    """The intertwiner group of a named activation.

    Args:
      name: one of :data:`ACTIVATIONS`.
      **params: ``negative_slope`` for ``"leaky_relu"`` (default 0.01), ``degree``
        for ``"power"`` (default 2).

    Note:
      LeakyReLU with slope 1 and the power of degree 1 are the identity, whose
      group is ``GL_n``; LeakyReLU with slope -1 is ``|x|``, whose group also
      contains sign flips (``phi(A) = |A|``).
      Slope 0 is ReLU. For the activations outside Table 1 (tanh, GELU, SiLU,
      softplus, ELU) the group holds the monomial elements that intertwine,
      found numerically; other elements are not ruled out.
    """
    if name not in _ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}; choose one of {ACTIVATIONS}.")
    expected = _PARAMS.get(name)
    unknown = set(params) - {expected}
    if unknown:
        raise TypeError(
            f"Activation {name!r} takes "
            f"{'no parameters' if expected is None else repr(expected)}, "
            f"got {sorted(unknown)}."
        )
    if expected is None:
        return IntertwinerGroup(name)
    default = {"negative_slope": 0.01, "degree": 2}[expected]
    value = params.get(expected, default)
    if name == "power" and (int(value) != value or value < 1):
        raise ValueError(f"degree must be a positive integer, got {value}.")
    return IntertwinerGroup(name, value)


# ---------------------------------------------------------------------------
# Lemma 3.1 and a numeric intertwining test for any activation.


def lemma_phi(sigma: Callable[[Array], Array], A: Array) -> Array:
    """The generic ``phi_sigma(A) = sigma(A) sigma(I)^{-1}`` of Lemma 3.1.

    Args:
      sigma: a coordinatewise activation.
      A: ``[n, n]`` matrix.

    Returns:
      ``[n, n]`` matrix. It is the only candidate ``B`` with
      ``sigma(A x) = B sigma(x)``; whether it intertwines is tested by
      :func:`intertwines`.

    Raises:
      ValueError: if ``sigma(I_n)`` is singular (the lemma does not apply).
    """
    A = jnp.asarray(A)
    sI = sigma(jnp.eye(A.shape[0], dtype=A.dtype))
    if not _well_conditioned(np.asarray(sI), 1e-10):
        raise ValueError(
            "sigma(I_n) is singular (its singular values span more than ten "
            "orders of magnitude), so Lemma 3.1 does not apply."
        )
    return jnp.linalg.solve(sI.T, sigma(A).T).T


def intertwines(
    sigma: Callable[[Array], Array],
    A: Element | Array,
    key: Array,
    *,
    num_samples: int = 256,
    input_scale: float = 3.0,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> bool:
    """Numerically tests whether ``sigma(A x) = phi(A) sigma(x)`` for all ``x``.

    ``phi(A)`` is taken from Lemma 3.1, so the test needs no knowledge of the
    activation's group: it works for any coordinatewise ``sigma`` with invertible
    ``sigma(I)`` (tanh, GELU, SiLU, softplus, ELU, ...).

    Args:
      sigma: coordinatewise activation.
      A: a candidate element, structured or a dense ``[n, n]`` matrix.
      key: PRNG key for the random inputs ``x ~ input_scale * N(0, I)``.
      num_samples: number of random inputs.
      input_scale: standard deviation of the inputs.
      rtol, atol: tolerances of the comparison; use float64 for tight ones.

    Returns:
      True when every sampled ``x`` satisfies the identity to tolerance.
    """
    A = A.matrix() if isinstance(A, Monomial | Dense) else jnp.asarray(A)
    B = lemma_phi(sigma, A)
    x = input_scale * jax.random.normal(key, (num_samples, A.shape[0]), A.dtype)
    hp = jax.lax.Precision.HIGHEST
    lhs = sigma(jnp.matmul(x, A.T, precision=hp))
    rhs = jnp.matmul(sigma(x), B.T, precision=hp)
    return bool(jnp.allclose(lhs, rhs, rtol=rtol, atol=atol))
