"""Model stitching (paper Section 4): stitching layers, their training, the penalty.

- :mod:`symjax.stitching.layers`: the stitching classes (full, low-rank, sparse,
  G_ReLU, orthogonal, identity) behind one interface;
- :mod:`symjax.stitching.sinkhorn`: the Birkhoff-polytope relaxation of the G_ReLU
  layer's permutation (OTT-JAX Sinkhorn) and its Hungarian rounding;
- :mod:`symjax.stitching.train`: :func:`stitch` and :func:`stitch_pairs`;
- :mod:`symjax.stitching.penalty`: the stitching penalty (eq. 4.3).
"""

from symjax.stitching.layers import (
    INITS,
    METHODS,
    Affine,
    StitchingLayer,
    make_layer,
)
from symjax.stitching.penalty import confidence_interval, stitching_penalty
from symjax.stitching.sinkhorn import (
    channel_correlation,
    doubly_stochastic,
    relaxation_diagnostics,
    round_to_permutation,
)
from symjax.stitching.train import (
    StitchConfig,
    StitchResult,
    StitchStep,
    make_stitch_step,
    model_accuracy,
    stitch,
    stitch_pairs,
)

__all__ = [
    "INITS",
    "METHODS",
    "Affine",
    "StitchConfig",
    "StitchResult",
    "StitchStep",
    "StitchingLayer",
    "channel_correlation",
    "confidence_interval",
    "doubly_stochastic",
    "make_layer",
    "make_stitch_step",
    "model_accuracy",
    "relaxation_diagnostics",
    "round_to_permutation",
    "stitch",
    "stitch_pairs",
    "stitching_penalty",
]
