"""Stitching layers: maps ``phi`` between two models' features at one layer.

A stitched network (paper Section 4) is ``S = f~_{>l} o phi o f_{<=l}``: the front
of ``f`` up to activation layer ``l``, a stitching layer ``phi``, and the back of
``f~``. Stitching acts on channels only, so ``phi`` is a map ``R^n -> R^n`` applied
to the channel axis of channels-last features ``h`` (``[..., n]``): a ``1 x 1``
convolution for convolutional features, a matrix for dense ones. The classes:

================  ===============================================  ==============
``method``        ``phi(h)``                                       trained
================  ===============================================  ==============
``"full"``        ``W h + b``                                      ``W, b``
``"low_rank"``    ``U V h + b``, ``U`` ``[n, r]``, ``V`` ``[r, n]``  ``U, V, b``
``"sparse"``      ``W h + b`` with ``lambda ||W||_1`` in the loss;  ``W, b``
                  entries below a tolerance zeroed at evaluation
``"g_relu"``      ``P D h``, ``P`` a permutation, ``D`` positive    ``P, D``
                  diagonal (the group ``G_ReLU`` of Table 1)
``"orthogonal"``  ``Q h``, ``Q`` orthogonal                         ``Q``
``"identity"``    ``h`` (no stitching layer)                       nothing
================  ===============================================  ==============

Every layer has one interface (:class:`StitchingLayer`): ``init`` builds the
trainable ``params`` and a non-trainable ``state``, ``apply`` is the training-time
map, ``regularizer`` its penalty, ``harden`` the evaluation-time map (an
:class:`Affine` or a :class:`symjax.groups.Monomial`; ``evaluate`` returns it with
diagnostics), and ``successor`` the
layer, if any, that training continues with (entered through ``advance``).
Layers are frozen dataclasses, so they are hashable static arguments of jitted
functions; every function is pure and vmaps over a leading axis of ``params`` and
``state`` (one stitching problem per model pair).

The G_ReLU layer trains in two stages. First ``P`` is relaxed to a doubly
stochastic matrix ``S_epsilon(L)`` of learned logits ``L``
(:mod:`symjax.stitching.sinkhorn`) while ``epsilon`` is annealed; then ``P`` is
rounded to the nearest permutation and fixed, and only ``D`` is fine-tuned
(:class:`GReLURounded`). It is evaluated as the hard ``P D`` in both stages.

Initialisation (``init="match"``, the default) uses features of both models on the
same training images, ``X`` (``[m, n]``, from ``f``) and ``Y`` (from ``f~``):
least squares of ``Y`` on ``X`` (full, sparse), its reduced-rank truncation
(low-rank), the orthogonal Procrustes solution (orthogonal), and for G_ReLU logits
equal to the channel correlations ``corr(Y_i, X_j)`` with ``D`` the ratio of the
channels' root mean squares along the correlation matching. ``init="neutral"``
uses no data: identity matrices, a random rank-``r`` projection, uniform ``P`` with
``D = I``.

Note:
  The relaxed G_ReLU objective is not convex. Between a network and its own copy
  transformed by ``A`` in ``G_ReLU`` (Theorem 4.2), ``init="match"`` finds ``A``
  at once, while training from ``init="neutral"`` ends in a nearby local optimum:
  on a 24-unit layer of an MLP on the digits it matched about two thirds of the
  live units and lost a few points of accuracy (``tests/test_stitching_train.py``).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from symjax.groups import Monomial
from symjax.stitching import sinkhorn

Array = jax.Array
Params = Any
State = Any
Features = tuple[Array, Array]

INITS = ("match", "neutral")
_HI = jax.lax.Precision.HIGHEST


def _channels_last(v: Array, ndim: int) -> Array:
    """Reshapes ``[n]`` to broadcast over the last axis of an ``ndim`` array."""
    return v.reshape((1,) * (ndim - 1) + (-1,))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Affine:
    """The affine map ``h -> M h + b`` on a channel axis.

    Attributes:
      matrix: ``[n, n]`` matrix ``M``.
      bias: ``[n]`` vector ``b``.
    """

    matrix: Array
    bias: Array

    @property
    def size(self) -> int:
        return self.matrix.shape[-1]

    def apply(self, h: Array, axis: int = -1) -> Array:
        """Computes ``M h + b`` along ``axis`` of ``h`` (``[..., n, ...]``)."""
        moved = jnp.moveaxis(h, axis, -1)
        out = jnp.matmul(moved, self.matrix.T) + _channels_last(self.bias, moved.ndim)
        return jnp.moveaxis(out, -1, axis)


StitchMap = Affine | Monomial


class StitchingLayer(abc.ABC):
    """The interface shared by every stitching class.

    Subclasses are frozen dataclasses whose fields are hyperparameters.
    """

    method: ClassVar[str]

    @abc.abstractmethod
    def init(
        self, key: Array, n: int, dtype=jnp.float32, features: Features | None = None
    ) -> tuple[Params, State]:
        """Initial trainable parameters and state for ``n`` channels.

        Args:
          key: PRNG key.
          n: number of channels.
          dtype: parameter dtype.
          features: ``(X, Y)``, each ``[m, n]``: the two models' features on the
            same inputs (rows are samples or pixels); required by
            ``init="match"``.
        """

    @abc.abstractmethod
    def apply(
        self, params: Params, state: State, h: Array, epsilon: Array
    ) -> tuple[Array, State]:
        """The training-time map on channels-last ``h`` (``[..., n]``).

        Args:
          epsilon: the current Sinkhorn regularisation (used by G_ReLU only).

        Returns:
          ``(phi(h), new_state)``.
        """

    def regularizer(self, params: Params) -> Array:
        """A penalty added to the training loss (0 unless stated)."""
        del params
        return jnp.zeros(())

    @abc.abstractmethod
    def harden(self, params: Params, state: State, epsilon: Array) -> StitchMap:
        """The map used for every reported accuracy."""

    def evaluate(
        self, params: Params, state: State, epsilon: Array
    ) -> tuple[StitchMap, dict[str, Array]]:
        """The hard map and scalars describing it (none unless stated)."""
        return self.harden(params, state, epsilon), {}

    @property
    def successor(self) -> StitchingLayer | None:
        """The layer training continues with after this one, or None."""
        return None

    def advance(self, hard: StitchMap) -> tuple[Params, State]:
        """``(params, state)`` of :attr:`successor` that start from ``hard``."""
        raise NotImplementedError(f"the {self.method!r} layer has no successor.")


def _features(features: Features | None, init: str, method: str) -> Features:
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}.")
    if features is None:
        raise ValueError(
            f"init='match' of the {method!r} layer needs features=(X, Y) of both "
            "models; pass them or use init='neutral'."
        )
    X, Y = features
    if X.ndim != 2 or X.shape != Y.shape:
        raise ValueError(
            f"features must be two [m, n] arrays of one shape, got {X.shape} and "
            f"{Y.shape}."
        )
    return X, Y


def _least_squares(X: Array, Y: Array, ridge: float) -> tuple[Array, Array]:
    """``W, b`` minimising ``||X W^T + b - Y||^2 + lambda ||W||^2`` (centred).

    ``lambda`` is ``ridge`` times the mean eigenvalue of the centred Gram matrix, so
    dead channels (constant features) do not make the system singular.
    """
    mx, my = X.mean(axis=0), Y.mean(axis=0)
    Xc, Yc = X - mx[None, :], Y - my[None, :]
    G = jnp.matmul(Xc.T, Xc, precision=_HI)
    n = G.shape[0]
    lam = ridge * jnp.trace(G) / n + 1e-12
    W = jnp.linalg.solve(G + lam * jnp.eye(n, dtype=G.dtype), Xc.T @ Yc).T
    return W, my - jnp.matmul(W, mx, precision=_HI)


@dataclasses.dataclass(frozen=True)
class Identity(StitchingLayer):
    """No stitching layer: ``phi(h) = h`` (a reference)."""

    method: ClassVar[str] = "identity"

    def init(self, key, n, dtype=jnp.float32, features=None):
        del key, features
        # The state only records the width, for the hard map.
        return {}, {"ones": jnp.ones((n,), dtype)}

    def apply(self, params, state, h, epsilon):
        del params, epsilon
        return h, state

    def harden(self, params, state, epsilon):
        del params, epsilon
        return Monomial(jnp.arange(state["ones"].shape[-1]), state["ones"])


@dataclasses.dataclass(frozen=True)
class Full(StitchingLayer):
    """A full affine map ``phi(h) = W h + b`` (the authors' layer has no bias).

    Attributes:
      init_mode: ``"match"`` (ridge least squares) or ``"neutral"`` (``W = I``).
      ridge: relative ridge of the least-squares initialisation.
    """

    init_mode: str = "match"
    ridge: float = 1e-3
    method: ClassVar[str] = "full"

    def init(self, key, n, dtype=jnp.float32, features=None):
        del key
        if self.init_mode == "neutral":
            return {"W": jnp.eye(n, dtype=dtype), "b": jnp.zeros((n,), dtype)}, {}
        X, Y = _features(features, self.init_mode, self.method)
        W, b = _least_squares(X, Y, self.ridge)
        return {"W": W.astype(dtype), "b": b.astype(dtype)}, {}

    def apply(self, params, state, h, epsilon):
        del epsilon
        return Affine(params["W"], params["b"]).apply(h), state

    def harden(self, params, state, epsilon):
        del state, epsilon
        return Affine(params["W"], params["b"])


@dataclasses.dataclass(frozen=True)
class Sparse(Full):
    """A full affine map trained with an L1 penalty (the authors' "lasso" layer).

    The loss gains ``l1 * sum_ij |W_ij|``; at evaluation the entries with
    ``|W_ij| < tolerance * max |W|`` are set to zero.

    Attributes:
      l1: weight ``lambda`` of the penalty.
      tolerance: relative threshold below which entries count as zero.

    Note:
      A subgradient penalty does not make entries exactly zero under SGD or Adam
      (they oscillate around zero with the step size), hence the threshold; the
      ``density`` diagnostic reports the fraction of entries kept.
    """

    l1: float = 1e-4
    tolerance: float = 1e-2
    method: ClassVar[str] = "sparse"

    def regularizer(self, params):
        return self.l1 * jnp.sum(jnp.abs(params["W"]))

    def _mask(self, W: Array) -> Array:
        return jnp.abs(W) >= self.tolerance * jnp.max(jnp.abs(W))

    def harden(self, params, state, epsilon):
        del state, epsilon
        W = params["W"]
        return Affine(jnp.where(self._mask(W), W, 0), params["b"])

    def evaluate(self, params, state, epsilon):
        density = jnp.mean(self._mask(params["W"]).astype(jnp.float32))
        return self.harden(params, state, epsilon), {"density": density}


@dataclasses.dataclass(frozen=True)
class LowRank(StitchingLayer):
    """An affine map of rank at most ``r``: ``phi(h) = U V h + b``.

    Attributes:
      rank: ``r``.
      init_mode: ``"match"`` (reduced-rank regression: the least-squares map
        projected onto the top ``r`` principal directions of its fitted values) or
        ``"neutral"`` (``U = V^T`` with ``r`` random orthonormal columns).
      ridge: relative ridge of the least-squares fit.
    """

    rank: int = 1
    init_mode: str = "match"
    ridge: float = 1e-3
    method: ClassVar[str] = "low_rank"

    def __post_init__(self):
        if int(self.rank) != self.rank or self.rank < 1:
            raise ValueError(f"rank must be a positive integer, got {self.rank}.")

    def init(self, key, n, dtype=jnp.float32, features=None):
        if self.rank > n:
            raise ValueError(f"rank={self.rank} exceeds the {n} channels.")
        if self.init_mode == "neutral":
            Q = jax.random.orthogonal(key, n, dtype=dtype)[:, : self.rank]
            return {"U": Q, "V": Q.T, "b": jnp.zeros((n,), dtype)}, {}
        X, Y = _features(features, self.init_mode, self.method)
        W, _ = _least_squares(X, Y, self.ridge)
        mx, my = X.mean(axis=0), Y.mean(axis=0)
        fitted = jnp.matmul(X - mx[None, :], W.T, precision=_HI)
        _, _, vt = jnp.linalg.svd(fitted, full_matrices=False)
        U = vt[: self.rank].T
        V = jnp.matmul(U.T, W, precision=_HI)
        b = my - jnp.matmul(U, jnp.matmul(V, mx, precision=_HI), precision=_HI)
        return {"U": U.astype(dtype), "V": V.astype(dtype), "b": b.astype(dtype)}, {}

    def apply(self, params, state, h, epsilon):
        del epsilon
        z = jnp.matmul(h, params["V"].T)
        out = jnp.matmul(z, params["U"].T) + _channels_last(params["b"], h.ndim)
        return out, state

    def harden(self, params, state, epsilon):
        del state, epsilon
        return Affine(params["U"] @ params["V"], params["b"])


def _cayley(K: Array) -> Array:
    """The Cayley map ``(I - A)^{-1} (I + A)`` of the skew part ``A = K - K^T``."""
    A = K - K.T
    eye = jnp.eye(K.shape[0], dtype=K.dtype)
    return jnp.linalg.solve(eye - A, eye + A)


@dataclasses.dataclass(frozen=True)
class Orthogonal(StitchingLayer):
    """An orthogonal map ``phi(h) = Q h`` with ``Q = Q_0 C(K)`` (a reference).

    ``C(K)`` is the Cayley transform of the skew-symmetric part of the trained
    ``K`` (``C(0) = I``); ``Q_0`` is fixed at initialisation.

    Attributes:
      init_mode: ``"match"`` (``Q_0`` solves orthogonal Procrustes,
        ``min ||X Q^T - Y||_F``) or ``"neutral"`` (``Q_0 = I``).

    Note:
      The Cayley transform reaches the orthogonal matrices without eigenvalue
      ``-1`` near ``Q_0``, so training explores a neighbourhood of ``Q_0`` that
      covers the rotations one usually needs, but not every reflection.
    """

    init_mode: str = "match"
    method: ClassVar[str] = "orthogonal"

    def init(self, key, n, dtype=jnp.float32, features=None):
        del key
        if self.init_mode == "neutral":
            Q0 = jnp.eye(n, dtype=dtype)
        else:
            X, Y = _features(features, self.init_mode, self.method)
            u, _, vt = jnp.linalg.svd(jnp.matmul(Y.T, X, precision=_HI))
            Q0 = (u @ vt).astype(dtype)
        return {"K": jnp.zeros((n, n), dtype)}, {"Q0": Q0}

    def _matrix(self, params, state):
        return state["Q0"] @ _cayley(params["K"])

    def apply(self, params, state, h, epsilon):
        del epsilon
        return jnp.matmul(h, self._matrix(params, state).T), state

    def harden(self, params, state, epsilon):
        del epsilon
        Q = self._matrix(params, state)
        return Affine(Q, jnp.zeros(Q.shape[:1], Q.dtype))


def _rms(X: Array) -> Array:
    return jnp.sqrt(jnp.mean(X * X, axis=0))


@dataclasses.dataclass(frozen=True)
class GReLU(StitchingLayer):
    """The G_ReLU layer ``phi(h) = P D h``, with ``P`` relaxed (first stage).

    Trained parameters: ``logits`` ``L`` (``[n, n]``) and ``log_scale``
    (``[n]``, ``D = diag(exp(log_scale))``, so ``D`` stays positive). During training
    ``phi(h) = S_epsilon(L) D h`` with ``S_epsilon(L)`` the Sinkhorn projection of
    ``L`` onto the doubly stochastic matrices; at evaluation
    ``P = round(S_epsilon(L))`` (Hungarian) and ``phi`` is the monomial ``P D``.
    The state holds Sinkhorn's dual potentials, which warm-start the next step.

    Attributes:
      init_mode: ``"match"`` (``L`` = channel correlations, ``D`` = root-mean-square
        ratios along their matching) or ``"neutral"`` (``L`` small noise,
        ``D = I``).
      max_iterations: Sinkhorn's iteration budget per step.
      threshold: Sinkhorn's tolerance on the marginal error.
      noise: scale of the random logits of the neutral initialisation, which
        break the symmetry of the uniform matrix.

    Note:
      The authors instead take SGD steps on ``P`` itself, clip it to be
      non-negative, alternate 16 row and column normalisations, and add
      ``-0.1 ||P||_F`` to the loss to push ``P`` toward a vertex. Here the
      annealed ``epsilon`` plays that role, and ``P`` is exactly doubly
      stochastic up to Sinkhorn's tolerance at every step.
    """

    init_mode: str = "match"
    max_iterations: int = 100
    threshold: float = 1e-3
    noise: float = 1e-3
    method: ClassVar[str] = "g_relu"

    def init(self, key, n, dtype=jnp.float32, features=None):
        zeros = jnp.zeros((n,), dtype)
        state = {"potentials": (zeros, zeros)}
        if self.init_mode == "neutral":
            logits = self.noise * jax.random.normal(key, (n, n), dtype)
            return {"logits": logits, "log_scale": zeros}, state
        X, Y = _features(features, self.init_mode, self.method)
        C = sinkhorn.channel_correlation(X, Y)
        perm = sinkhorn.round_to_permutation(C)
        ratio = _rms(Y) / jnp.maximum(_rms(X)[perm], 1e-12)
        ratio = jnp.where(_rms(X)[perm] > 1e-12, ratio, 1.0)
        ratio = jnp.where(ratio > 1e-12, ratio, 1.0)
        # D acts on the input channels: channel perm[i] of X feeds output i.
        log_scale = jnp.zeros((n,), dtype).at[perm].set(jnp.log(ratio).astype(dtype))
        return {"logits": C.astype(dtype), "log_scale": log_scale}, state

    def relax(self, params, state, epsilon) -> sinkhorn.Relaxation:
        """``S_epsilon(L)`` warm-started from the state's potentials."""
        potentials = jax.lax.stop_gradient(state["potentials"])
        return sinkhorn.doubly_stochastic(
            params["logits"],
            epsilon,
            potentials,
            max_iterations=self.max_iterations,
            threshold=self.threshold,
        )

    def apply(self, params, state, h, epsilon):
        relaxed = self.relax(params, state, epsilon)
        M = relaxed.matrix * jnp.exp(params["log_scale"])[None, :]
        new_state = {"potentials": jax.lax.stop_gradient(relaxed.potentials)}
        return jnp.matmul(h, M.T), new_state

    def harden(self, params, state, epsilon):
        return self.evaluate(params, state, epsilon)[0]

    def evaluate(self, params, state, epsilon):
        relaxed = self.relax(params, state, epsilon)
        perm = sinkhorn.round_to_permutation(relaxed.matrix)
        diagnostics = sinkhorn.relaxation_diagnostics(relaxed.matrix, perm)
        diagnostics["sinkhorn_converged"] = relaxed.converged.astype(jnp.float32)
        diagnostics["sinkhorn_iterations"] = relaxed.iterations.astype(jnp.float32)
        return Monomial(perm, jnp.exp(params["log_scale"])[perm]), diagnostics

    @property
    def successor(self):
        return GReLURounded()

    def advance(self, hard):
        return {"log_scale": jnp.log(hard.scale)}, {"perm": hard.perm}


@dataclasses.dataclass(frozen=True)
class GReLURounded(StitchingLayer):
    """The G_ReLU layer with ``P`` fixed (second stage): only ``D`` is trained.

    ``phi(h) = Monomial(perm, exp(log_scale)) h``, i.e.
    ``phi(h)_i = exp(log_scale_i) h_{perm_i}``; ``perm`` sits in the state.
    """

    method: ClassVar[str] = "g_relu"

    def init(self, key, n, dtype=jnp.float32, features=None):
        del key, features
        return {"log_scale": jnp.zeros((n,), dtype)}, {"perm": jnp.arange(n)}

    def harden(self, params, state, epsilon):
        del epsilon
        return Monomial(state["perm"], jnp.exp(params["log_scale"]))

    def apply(self, params, state, h, epsilon):
        return self.harden(params, state, epsilon).apply(h, -1), state


METHODS = ("full", "low_rank", "sparse", "g_relu", "orthogonal", "identity")


def make_layer(method: str, **options) -> StitchingLayer:
    """The stitching layer of one class.

    Args:
      method: one of :data:`METHODS`.
      **options: fields of that class (``init_mode``, ``rank``, ``l1``,
        ``tolerance``, ``max_iterations``, ...); options a class does not have are
        rejected.

    Returns:
      The layer (a frozen, hashable dataclass).
    """
    classes = {
        "full": Full,
        "low_rank": LowRank,
        "sparse": Sparse,
        "g_relu": GReLU,
        "orthogonal": Orthogonal,
        "identity": Identity,
    }
    if method not in classes:
        raise ValueError(
            f"Unknown stitching method {method!r}; choose one of {METHODS}."
        )
    cls = classes[method]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(
            f"The {method!r} layer takes options {sorted(names)}, got {unknown}."
        )
    init_mode = options.get("init_mode")
    if init_mode is not None and init_mode not in INITS:
        raise ValueError(f"init_mode must be one of {INITS}, got {init_mode!r}.")
    return cls(**options)
