"""Interpretable units along fractional rotations of a layer's basis (Section 6).

The paper's Figure 3 asks whether a layer's own basis is special: it draws a
Haar-random rotation ``Q`` in ``SO(U)`` for a layer with ``U`` units, walks the
geodesic ``Q^alpha``, ``alpha`` in ``[0, 1]``
(:func:`symjax.rotations.fractional_rotation`), and dissects the units of the
rotated features ``h' = Q^alpha h`` at each step.
If the count of interpretable units falls with ``alpha``, the activation basis
carries the interpretability; if it stays flat, any basis does as well.

The rotations are indexed by integers: rotation ``r`` of a sweep with seed ``s``
is drawn from ``jax.random.fold_in(jax.random.key(s), r)``, so every row of a
sweep can be recomputed on its own and an interrupted sweep resumes rotation by
rotation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import jax
import numpy as np
import scipy.stats

from symjax.dissection.concepts import ArrayConcepts, ConceptDataset, layout
from symjax.dissection.iou import (
    IOU_THRESHOLD,
    SUMMARY_THRESHOLDS,
    DissectionResult,
    dissect_rotations,
)
from symjax.rotations import fractional_rotation, haar_special_orthogonal

Array = jax.Array
logger = logging.getLogger(__name__)

#: The steps of ``alpha`` in the paper's Figure 3.
ALPHAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def random_rotation(seed: int, index: int, num_units: int) -> np.ndarray:
    """Rotation ``Q_r`` of a sweep: Haar-random in ``SO(U)``.

    Args:
      seed: the sweep's seed ``s``.
      index: the rotation's index ``r >= 0``.
      num_units: ``U``.

    Returns:
      ``[U, U]`` float64 numpy rotation, drawn from
      ``fold_in(key(s), r)`` (in float32 and then projected by
      :func:`~symjax.rotations.fractional_rotation`, so it does not depend on
      whether x64 is enabled beyond rounding).
    """
    if index < 0:
        raise ValueError(f"index must be non-negative, got {index}.")
    key = jax.random.fold_in(jax.random.key(seed), index)
    return np.asarray(haar_special_orthogonal(key, num_units, np.float32), np.float64)


def rotation_path(Q, alphas: Sequence[float]) -> np.ndarray:
    """The bases ``Q^alpha`` for every ``alpha`` (float32, rows are the new units).

    Args:
      Q: ``[U, U]`` rotation.
      alphas: ``k`` exponents.

    Returns:
      ``[k, U, U]`` float32; ``Q^0`` is exactly the identity.
    """
    # fractional_rotation works in float64 and returns Q's dtype.
    path = fractional_rotation(np.asarray(Q, np.float32), list(alphas))
    return np.asarray(path, np.float32)


def summary_row(result: DissectionResult, thresholds=SUMMARY_THRESHOLDS) -> dict:
    """A flat, CSV-ready summary of one dissection.

    Returns:
      ``num_units``, ``mean_best_iou``, ``median_best_iou`` and, for every IoU
      threshold ``t``, ``interpretable@t`` (units whose best IoU exceeds ``t``)
      and ``unique@t`` (distinct concepts among them); plus ``by_category``, the
      interpretable units at :data:`IOU_THRESHOLD` by category (a dict).
    """
    row = {
        "num_units": result.num_units,
        "mean_best_iou": result.mean_best_iou,
        "median_best_iou": float(np.median(result.best_iou)),
    }
    for t in thresholds:
        row[f"interpretable@{t:g}"] = result.num_interpretable(t)
    for t in thresholds:
        row[f"unique@{t:g}"] = result.num_unique_concepts(t)
    row["by_category"] = result.num_interpretable_by_category(IOU_THRESHOLD)
    return row


def sweep_layer(
    features: np.ndarray,
    dataset: ConceptDataset,
    alphas: Sequence[float] = ALPHAS,
    rotations: Iterable[int] = range(3),
    *,
    seed: int = 0,
    include_own_basis: bool = True,
    skip: Callable[[float | None, int | None], bool] | None = None,
    batch_size: int = 100,
    quantile_at: str = "features",
) -> Iterable[list[dict]]:
    """Dissects one layer in the bases ``Q_r^alpha``, one rotation at a time.

    Args:
      features: ``[N, h, w, U]`` (or ``[N, U]``) activations of the dataset's
        images, in dataset order.
      dataset: the concept data.
      alphas: the exponents ``alpha``.
      rotations: the indices ``r`` of the rotations ``Q_r`` (see
        :func:`random_rotation`).
      seed: the sweep's seed.
      include_own_basis: also dissect the layer's own units with no rotation
        matrix at all (its rows have ``alpha = 0`` and ``rotation = None``), the
        reference that every ``alpha = 0`` row must reproduce.
      skip: ``skip(alpha, rotation)`` says a row is already done (for resuming);
        ``rotation`` is None for the own-basis row.
      batch_size: images per dissection batch.
      quantile_at: see :func:`~symjax.dissection.dissect_rotations`.

    Yields:
      For the own basis (if wanted) and then for each rotation with rows left to
      do, the list of rows of that rotation: ``{"alpha", "rotation", "seed"}`` and
      :func:`summary_row`. Rows are yielded as soon as they are computed, so a
      caller that stores them loses at most one rotation when interrupted.
    """
    features = np.asarray(features)
    U = features.shape[-1]
    alphas = [float(a) for a in alphas]
    if not alphas:
        raise ValueError("alphas is empty; pass at least one exponent.")
    skip = skip or (lambda alpha, rotation: False)

    if include_own_basis and not skip(0.0, None):
        (result,) = dissect_rotations(
            features, dataset, [None], batch_size=batch_size, quantile_at=quantile_at
        )
        yield [{"alpha": 0.0, "rotation": None, "seed": seed, **summary_row(result)}]

    for r in rotations:
        todo = [a for a in alphas if not skip(a, r)]
        if not todo:
            continue
        bases = rotation_path(random_rotation(seed, r, U), todo)
        results = dissect_rotations(
            features,
            dataset,
            list(bases),
            batch_size=batch_size,
            quantile_at=quantile_at,
        )
        logger.info("dissected rotation %d at %d alphas (%d units)", r, len(todo), U)
        yield [
            {"alpha": a, "rotation": r, "seed": seed, **summary_row(res)}
            for a, res in zip(todo, results, strict=True)
        ]


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval.

    Args:
      values: ``n`` samples (e.g. one per rotation).
      level: the interval's coverage.

    Returns:
      ``(mean, half_width)``: ``t_{(1 + level) / 2, n - 1} s / sqrt(n)`` with ``s``
      the sample standard deviation; the half-width is 0 for one sample and both
      are NaN for none.

    Note:
      With three rotations ``t`` is 4.3, so the intervals are wide; they describe
      the spread over random rotations of one trained model, not over training
      seeds.
    """
    v = np.asarray(list(values), np.float64)
    if v.size == 0:
        return math.nan, math.nan
    if v.size == 1:
        return float(v[0]), 0.0
    t = scipy.stats.t.ppf(0.5 + level / 2, v.size - 1)
    return float(v.mean()), float(t * v.std(ddof=1) / math.sqrt(v.size))


def alpha_curve(
    rows: Iterable[Mapping], metric: str, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A metric against ``alpha``, averaged over rotations.

    Args:
      rows: rows of one model and layer (own-basis rows, ``rotation = None``, are
        left out).
      metric: a row field, e.g. ``"interpretable@0.04"`` or ``"mean_best_iou"``.
      level: coverage of the interval (see :func:`mean_interval`).

    Returns:
      ``alphas [k]`` ascending, ``mean [k]`` and ``half_width [k]``.
    """
    by_alpha: dict[float, list[float]] = {}
    for row in rows:
        if row.get("rotation") is None:
            continue
        if metric not in row:
            raise ValueError(f"metric {metric!r} is not a field of the rows.")
        by_alpha.setdefault(float(row["alpha"]), []).append(float(row[metric]))
    alphas = np.asarray(sorted(by_alpha))
    stats = [mean_interval(by_alpha[a], level) for a in alphas]
    mean = np.asarray([m for m, _ in stats])
    half = np.asarray([h for _, h in stats])
    return alphas, mean, half


def concatenate_concepts(datasets: Sequence[ArrayConcepts]) -> ArrayConcepts:
    """The images of several in-memory concept sets, one after the other.

    The categories are the union of the sets' categories in order of first
    appearance, each pixel category with as many layers as the set that has
    most; an image gets no label (0) in the categories its own set lacks, so
    dissection leaves it out of those categories' IoU.

    Args:
      datasets: sets with one image and mask shape, and consistent concepts (a
        label number means the same concept name and category in every set).

    Returns:
      An :class:`~symjax.dissection.ArrayConcepts`.
    """
    if not datasets:
        raise ValueError("datasets is empty; pass at least one concept set.")
    shapes = {(d.image_shape, d.mask_shape) for d in datasets}
    if len(shapes) != 1:
        raise ValueError(
            f"datasets must share image and mask shapes, got {sorted(shapes)}; "
            "build them at one size."
        )
    concepts: dict[int, object] = {}
    categories: list[str] = []
    image_level: set[str] = set()
    counts: dict[str, int] = {}
    for d in datasets:
        for c in d.concepts:
            if concepts.setdefault(c.number, c) != c:
                raise ValueError(
                    f"label {c.number} is {concepts[c.number]} in one set and {c} "
                    "in another; renumber one set's concepts."
                )
        for cat in d.categories:
            if cat not in categories:
                categories.append(cat)
        image_level |= set(d.image_level_categories)
        for cat in set(d.layer_categories) | set(d.slot_categories):
            n = list(d.layer_categories).count(cat) + list(d.slot_categories).count(cat)
            counts[cat] = max(counts.get(cat, 0), n)
    layers, slots = layout(categories, frozenset(image_level), counts)

    def place(d: ArrayConcepts, own, arr, target) -> np.ndarray:
        out = np.zeros((len(d), len(target), *arr.shape[2:]), np.int32)
        used: dict[str, int] = {}
        for k, cat in enumerate(own):
            j = used.get(cat, 0)
            out[:, [i for i, c in enumerate(target) if c == cat][j]] = arr[:, k]
            used[cat] = j + 1
        return out

    return ArrayConcepts(
        images=np.concatenate([d.images for d in datasets]),
        pixel_labels=np.concatenate(
            [place(d, d.layer_categories, d.pixel_labels, layers) for d in datasets]
        ),
        image_labels=np.concatenate(
            [place(d, d.slot_categories, d.image_labels, slots) for d in datasets]
        ),
        concepts=list(concepts.values()),
        categories=categories,
        image_level_categories=sorted(image_level),
        layer_categories=layers,
        slot_categories=slots,
        names=[d.record(i).name for d in datasets for i in range(len(d))],
        splits=[d.record(i).split for d in datasets for i in range(len(d))],
    )
