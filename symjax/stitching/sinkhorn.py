"""Permutations relaxed to the Birkhoff polytope with OTT-JAX's Sinkhorn solver.

The G_ReLU stitching layer ``P D`` needs a permutation matrix ``P``, which gradient
descent cannot move directly. It is relaxed to the Birkhoff polytope ``B_n`` of
doubly stochastic matrices (non-negative, every row and column summing to one),
whose vertices are the permutation matrices (Birkhoff-von Neumann). A matrix of
``logits`` ``L`` (``[n, n]``) is mapped into ``B_n`` by entropic optimal transport
between two uniform measures on ``n`` points with cost ``-L``:

.. math::

    S_\\epsilon(L) = n \\, \\arg\\max_{T \\in U(1/n, 1/n)}
        \\langle L, T \\rangle + \\epsilon H(T),
    \\qquad S_\\epsilon(L)_{ij} = n \\exp((f_i + g_j + L_{ij}) / \\epsilon),

computed by OTT-JAX's log-domain Sinkhorn iterations, which cannot overflow or
underflow for small ``epsilon``. As ``epsilon -> 0`` the matrix tends to the
permutation that maximises ``sum_i L[i, perm[i]]``; annealing ``epsilon`` during
training therefore moves ``S`` toward a vertex. :func:`round_to_permutation` then
rounds with the Hungarian algorithm (scipy's, called from inside jitted and
vmapped code).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn

Array = jax.Array


class Relaxation(NamedTuple):
    """A point of the Birkhoff polytope and the solver state that produced it.

    Attributes:
      matrix: ``[n, n]`` doubly stochastic matrix ``S`` (rows and columns sum to one
        up to the solver's tolerance).
      potentials: ``(f, g)``, each ``[n]``: the dual potentials, to warm-start the
        next solve.
      converged: whether Sinkhorn met its tolerance within its iteration budget.
      iterations: Sinkhorn iterations used.
    """

    matrix: Array
    potentials: tuple[Array, Array]
    converged: Array
    iterations: Array


def doubly_stochastic(
    logits: Array,
    epsilon: float | Array,
    potentials: tuple[Array, Array] | None = None,
    *,
    max_iterations: int = 200,
    threshold: float = 1e-3,
) -> Relaxation:
    """The entropic projection ``S_epsilon(L)`` of ``logits`` onto ``B_n``.

    Args:
      logits: ``[n, n]`` scores ``L``; ``S`` favours large ``L[i, j]``.
      epsilon: entropic regularisation (may be traced, so that an annealing
        schedule does not recompile); smaller is closer to a permutation.
      potentials: ``(f [n], g [n])`` from a previous call, to warm-start the
        iterations (zeros when None).
      max_iterations: Sinkhorn's iteration budget.
      threshold: tolerance on the L1 error of the column marginal of the transport
        plan (which has total mass one).

    Returns:
      The :class:`Relaxation`. Gradients flow to ``logits`` by unrolling the
      Sinkhorn iterations.

    Note:
      OTT broadcasts arrays of different ranks implicitly; this function allows
      that while it traces the solver, but a caller that makes implicit rank
      promotion an error must also allow it where the gradient is traced (around
      ``jax.grad``), since the backward pass is traced there.

      Implicit differentiation, OTT's default, fails in OTT 0.6.0 with the JAX
      version this project pins (the lineax solver returns non-finite values, and
      a user-supplied solver raises ``UnboundLocalError``), so the iterations are
      unrolled. Warm-starting from the previous step's potentials keeps the
      unrolled loop short (tens of iterations) during training. At very small
      ``epsilon`` Sinkhorn converges slowly; the returned ``converged`` flag and
      :func:`relaxation_diagnostics` report how far ``S`` is from doubly
      stochastic.
    """
    n = logits.shape[-1]
    if logits.shape != (n, n):
        raise ValueError(f"logits must be a square [n, n] matrix, got {logits.shape}.")
    if potentials is None:
        potentials = (jnp.zeros((n,), logits.dtype), jnp.zeros((n,), logits.dtype))
    geom = geometry.Geometry(cost_matrix=-logits, epsilon=epsilon)
    solver = sinkhorn.Sinkhorn(
        max_iterations=max_iterations, threshold=threshold, implicit_diff=None
    )
    # OTT broadcasts implicitly inside its error computation; that is allowed
    # here even where a caller made implicit rank promotion an error.
    with jax.numpy_rank_promotion("allow"):
        out = solver(linear_problem.LinearProblem(geom), init=potentials)
    return Relaxation(n * out.matrix, (out.f, out.g), out.converged, out.n_iters)


def _assignment(S: np.ndarray) -> np.ndarray:
    rows, cols = scipy.optimize.linear_sum_assignment(np.asarray(S), maximize=True)
    perm = np.empty_like(cols)
    perm[rows] = cols
    return perm.astype(np.int32)


def _assignments(S, n: int) -> np.ndarray:
    """``[..., n, n]`` -> ``[..., n]`` on the host.

    The callback may receive a ``jax.Array``; it is copied to numpy first, since
    slicing it would dispatch new computations from the callback thread while
    the calling computation holds the CPU's threads (a deadlock).
    """
    S = np.asarray(S)
    perms = [_assignment(m) for m in S.reshape(-1, n, n)]
    return np.stack(perms).reshape(S.shape[:-1])


def round_to_permutation(S: Array) -> Array:
    """The permutation matrix nearest to ``S`` (Hungarian algorithm).

    Args:
      S: ``[n, n]`` scores, usually a doubly stochastic matrix.

    Returns:
      ``[n]`` int32 ``perm`` maximising ``sum_i S[i, perm[i]]``; the permutation
      matrix is ``P[i, perm[i]] = 1``, which also minimises ``||S - P||_F``
      (since ``||S - P||_F^2 = ||S||_F^2 + n - 2 tr(P^T S)``).

    Note:
      The assignment is solved by scipy's ``linear_sum_assignment`` on the host
      through ``jax.pure_callback``, so the function works under ``jit`` and
      ``vmap`` (one problem after another) on every backend. Optax's in-jit
      Hungarian algorithm gives the same permutation, but compiles for seconds
      and runs slower on the CPU than scipy.
    """
    n = S.shape[-1]
    out = jax.ShapeDtypeStruct(S.shape[:-2] + (n,), jnp.int32)
    return jax.pure_callback(
        functools.partial(_assignments, n=n),
        out,
        S,
        vmap_method="expand_dims",
    )


def permutation_matrix(perm: Array, dtype=jnp.float32) -> Array:
    """``[n, n]`` matrix with ``P[i, perm[i]] = 1``."""
    n = perm.shape[-1]
    return jnp.zeros((n, n), dtype).at[jnp.arange(n), perm].set(1)


def relaxation_diagnostics(S: Array, perm: Array) -> dict[str, Array]:
    """How far a relaxed matrix is from ``B_n`` and from its rounding.

    Args:
      S: ``[n, n]`` relaxed matrix.
      perm: ``[n]`` its rounding (:func:`round_to_permutation`).

    Returns:
      ``marginal_error``: ``max(|S 1 - 1|, |S^T 1 - 1|)`` over all rows and columns
      (0 on ``B_n``); ``distance_to_permutation``: ``||S - P||_F / sqrt(2 n)``,
      which is 0 at the vertex ``P`` and at most 1 on ``B_n``;
      ``mass_on_permutation``: ``tr(P^T S) / n``, the average weight ``S`` puts on
      the rounded entries (1 at the vertex).
    """
    n = S.shape[-1]
    P = permutation_matrix(perm, S.dtype)
    marginal = jnp.maximum(
        jnp.max(jnp.abs(S.sum(axis=1) - 1)), jnp.max(jnp.abs(S.sum(axis=0) - 1))
    )
    return {
        "marginal_error": marginal,
        "distance_to_permutation": jnp.linalg.norm(S - P) / jnp.sqrt(2.0 * n),
        "mass_on_permutation": jnp.sum(S * P) / n,
    }


def channel_correlation(X: Array, Y: Array, tiny: float = 1e-12) -> Array:
    """Pearson correlations between the channels of two feature matrices.

    Args:
      X: ``[m, n]`` features of the first model (``m`` samples or pixels).
      Y: ``[m, n]`` features of the second model on the same inputs.
      tiny: guards channels that never vary (dead ReLU units), whose correlations
        are returned as 0.

    Returns:
      ``[n, n]`` matrix ``C[i, j] = corr(Y[:, i], X[:, j])`` (rows index the second
      model's channels, as the rows of a stitching matrix do).
    """
    Xc = X - X.mean(axis=0, keepdims=True)
    Yc = Y - Y.mean(axis=0, keepdims=True)
    Xn = Xc / jnp.maximum(jnp.linalg.norm(Xc, axis=0, keepdims=True), tiny)
    Yn = Yc / jnp.maximum(jnp.linalg.norm(Yc, axis=0, keepdims=True), tiny)
    return jnp.matmul(Yn.T, Xn, precision=jax.lax.Precision.HIGHEST)
