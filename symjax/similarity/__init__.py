"""Representation similarity measures and their invariance groups (paper Section 5).

Similarities (1 = identical up to the measure's group):
:func:`grelu_cka_similarity` (Definition 5.3), :func:`linear_cka_similarity`,
:func:`rbf_cka_similarity`, :func:`grelu_procrustes_similarity` (Definition 5.2),
:func:`orthogonal_procrustes_similarity`, :func:`cka_similarity_from_grams`, and
:func:`similarity_matrix` across all layers of two models.

Distances (0 = identical): :func:`grelu_procrustes_distance`,
:func:`orthogonal_procrustes_distance`.

Statistics (neither): :func:`hsic_unbiased`, :func:`hsic_biased`; Gram matrices
:func:`linear_gram`, :func:`max_gram`, :func:`rbf_gram`.

Measures by name: :data:`MEASURES`, :func:`get_measure`.

All functions accept ``[n, d]`` dense or ``[n, h, w, c]`` channels-last features
(the groups act on the channel axis), never modify their inputs, raise
``ValueError`` on NaN/inf input, and compute in the input's floating dtype (float64
when ``jax_enable_x64`` is on and the input is float64) with products at
``lax.Precision.HIGHEST``.
"""

from symjax.similarity.cka import (
    CKA,
    cka_similarity_from_grams,
    grelu_cka_similarity,
    linear_cka_similarity,
    rbf_cka_similarity,
)
from symjax.similarity.features import CONVENTIONS
from symjax.similarity.hsic import hsic_biased, hsic_unbiased
from symjax.similarity.kernels import linear_gram, max_gram, rbf_gram
from symjax.similarity.layers import similarity_matrix
from symjax.similarity.procrustes import (
    Procrustes,
    grelu_procrustes_distance,
    grelu_procrustes_similarity,
    orthogonal_procrustes_distance,
    orthogonal_procrustes_similarity,
)
from symjax.similarity.registry import MEASURES, get_measure

__all__ = [
    "CKA",
    "CONVENTIONS",
    "MEASURES",
    "Procrustes",
    "cka_similarity_from_grams",
    "get_measure",
    "grelu_cka_similarity",
    "grelu_procrustes_distance",
    "grelu_procrustes_similarity",
    "hsic_biased",
    "hsic_unbiased",
    "linear_cka_similarity",
    "linear_gram",
    "max_gram",
    "orthogonal_procrustes_distance",
    "orthogonal_procrustes_similarity",
    "rbf_cka_similarity",
    "rbf_gram",
    "similarity_matrix",
]
