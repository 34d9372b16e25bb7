"""Network dissection statistics (Bau et al., 2017; paper Section 6).

For a layer with ``U`` units and a :class:`~symjax.dissection.ConceptDataset`:

1. **Threshold.** Unit ``u``'s activation maps ``a_u`` over all images and
   positions give its threshold ``T_u``, the top ``q = 0.005`` quantile: the
   ``1 - q`` quantile with linear interpolation (``numpy.quantile``'s default),
   over the maps' own positions as in NetDissect (or, on request, over the
   maps upsampled to the label resolution).
2. **Masks.** Each map is upsampled bilinearly to the label resolution and
   thresholded strictly, ``M_u = {a_u > T_u}``. Strictness means that a unit that
   is zero at more than a fraction ``1 - q`` of positions (so ``T_u = 0``) lights
   only where it is positive, never every pixel.
3. **IoU.** For concept ``k`` of category ``c`` with masks ``L_k``, summed over
   the images ``x`` that carry any label of category ``c``:

   .. math:: \\mathrm{IoU}_{u,k} = \\frac{\\sum_x |M_u(x) \\cap L_k(x)|}
             {\\sum_x |M_u(x) \\cup L_k(x)|}.

4. **Detectors.** Unit ``u`` detects its best concept ``argmax_k IoU_{u,k}``
   when that IoU exceeds ``0.04``. A layer is summarised by the number of such
   *interpretable* units and of distinct concepts they detect; because the 0.04
   count saturates on small data, :class:`DissectionResult` also reports the
   mean best IoU and the counts at stricter IoU thresholds.

Section 6 dissects rotated units: the features are first rotated,
``h' = Q^alpha h`` (rows of ``Q^alpha`` are the new units, see
:func:`symjax.rotations.rotate_features`), and everything above, thresholds
included, is computed on ``h'``.

Memory does not grow with the dataset for the IoU: intersections, activated-pixel
counts and label counts are accumulated batch by batch. The threshold is exact:
the ``1 - q`` quantile of ``N`` values needs only the largest
``k = N - floor((1 - q)(N - 1))`` of them, about ``q N``, which a first pass
keeps per unit with a streaming top-``k`` (memory ``U x k``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from symjax.dissection.concepts import ConceptBatch, ConceptDataset
from symjax.rotations import rotate_features

Array = jax.Array
logger = logging.getLogger(__name__)

#: The IoU above which a unit counts as a detector (Bau et al., 2017).
IOU_THRESHOLD = 0.04
#: The top quantile of a unit's activations that defines its masks.
TOP_QUANTILE = 0.005
#: The IoU thresholds reported by :meth:`DissectionResult.summary`.
SUMMARY_THRESHOLDS = (0.04, 0.06, 0.08, 0.1, 0.15, 0.2)
_ONE_HOT_LIMIT = 2**26  # above this many one-hot entries per layer, scatter-add
_EXACT_FLOAT32 = 2**24  # per-batch counts stay below this, so float32 is exact


# Pass 1: exact top-quantile thresholds from a streaming top-k.


def quantile_plan(num_values: int, quantile: float = TOP_QUANTILE) -> tuple[int, float]:
    """How many top values the ``1 - quantile`` quantile of ``num_values`` needs.

    Args:
      num_values: ``N``, the number of activations per unit.
      quantile: ``q`` in ``(0, 1)``.

    Returns:
      ``(k, p)``: keep the ``k`` largest values; the quantile sits at ascending
      (0-based) position ``p = (1 - q)(N - 1)``.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile!r}.")
    if num_values < 1:
        raise ValueError(f"num_values must be positive, got {num_values!r}.")
    p = (1.0 - quantile) * (num_values - 1)
    return num_values - math.floor(p), p


def _as_maps(features: Array) -> Array:
    """``[b, U]`` dense features as ``[b, 1, 1, U]`` maps; maps pass through."""
    if features.ndim == 2:
        return features[:, None, None, :]
    if features.ndim != 4:
        raise ValueError(
            f"features must be [b, h, w, U] maps or [b, U] vectors, got "
            f"{features.shape}."
        )
    return features


@functools.partial(jax.jit, static_argnames=("k", "size"))
def top_k_update(
    top: Array | None,
    features: Array,
    valid: Array,
    rotation: Array | None,
    k: int,
    size: tuple[int, int] | None = None,
) -> Array:
    """Merges a batch into the running ``k`` largest activations of each unit.

    Args:
      top: ``[U, k]`` largest values so far, descending (``-inf`` where unfilled),
        or None before the first batch.
      features: ``[b, h, w, U]`` or ``[b, U]`` activations.
      valid: ``[b]`` bool, False for padding rows (ignored).
      rotation: ``[U, U]`` rotation applied to the units first, or None.
      k: how many values to keep (static).
      size: ``(h, w)`` to upsample the maps to (bilinearly) first, or None to
        keep the feature positions (static).

    Returns:
      ``[U, k]`` the ``k`` largest values of each unit, descending.
    """
    f = _as_maps(features)
    if rotation is not None:
        f = rotate_features(f, rotation)
    U = f.shape[-1]
    if size is not None:
        f = jax.image.resize(f, (f.shape[0], *size, U), method="bilinear")
    f = jnp.where(valid[:, None, None, None], f, -jnp.inf)
    values = f.reshape(-1, U).T
    if top is not None:
        values = jnp.concatenate([top, values], axis=1)
    if values.shape[1] < k:
        fill = jnp.full((U, k - values.shape[1]), -jnp.inf, values.dtype)
        values = jnp.concatenate([values, fill], axis=1)
    return jax.lax.top_k(values, k)[0]


def quantile_threshold(
    top: Array, num_values: int, quantile: float = TOP_QUANTILE
) -> np.ndarray:
    """The ``1 - quantile`` quantile of each unit from its largest values.

    Args:
      top: ``[U, k']`` each unit's largest values, descending, with ``k' >= k`` of
        :func:`quantile_plan`.
      num_values: ``N``, how many values each unit had in all.
      quantile: ``q``.

    Returns:
      ``[U]`` thresholds, equal to ``numpy.quantile(all_values, 1 - q, axis=...)``
      up to rounding of the interpolation.
    """
    k, p = quantile_plan(num_values, quantile)
    top = np.asarray(top)
    if top.shape[1] < k:
        raise ValueError(f"top holds {top.shape[1]} values per unit; {k} are needed.")
    lo, hi = math.floor(p), math.ceil(p)
    a = top[:, num_values - 1 - lo]
    b = top[:, num_values - 1 - hi]
    return a + (p - lo) * (b - a)


# Pass 2: streaming intersections, activated pixels and label counts.


@functools.partial(jax.jit, static_argnames=("num_labels", "num_categories"))
def tally_batch(
    features: Array,
    thresholds: Array,
    pixel_labels: Array,
    image_labels: Array,
    valid: Array,
    label_category: Array,
    rotation: Array | None,
    num_labels: int,
    num_categories: int,
) -> tuple[Array, Array, Array]:
    """One batch's dissection counts.

    Args:
      features: ``[b, h', w', U]`` or ``[b, U]`` activations.
      thresholds: ``[U]`` per-unit thresholds ``T_u``.
      pixel_labels: ``[b, L, h, w]`` int label numbers (0 = none).
      image_labels: ``[b, S]`` int label numbers of whole-image concepts.
      valid: ``[b]`` bool, False for padding rows.
      label_category: ``[K]`` int, each label's category index (-1 for none).
      rotation: ``[U, U]`` rotation applied to the units first, or None.
      num_labels: ``K``, one more than the largest label number (static).
      num_categories: ``C`` (static).

    Returns:
      ``intersection`` ``[U, K]``: pixels in ``M_u`` and ``L_k``;
      ``activation`` ``[U, C]``: pixels in ``M_u`` of images that carry a label of
      category ``c``; ``label_count`` ``[K]``: pixels in ``L_k``. All float32 and
      exact integers (each is below ``2^24``, which the caller checks).
    """
    f = _as_maps(features)
    if rotation is not None:
        f = rotate_features(f, rotation)
    b, L, h, w = pixel_labels.shape
    U = f.shape[-1]
    K, C = num_labels, num_categories
    hi = jax.lax.Precision.HIGHEST

    # Upsample to the label resolution and threshold strictly.
    up = jax.image.resize(f, (b, h, w, U), method="bilinear")
    fires = up > thresholds.astype(up.dtype)[None, None, None, :]
    fires = fires & valid[:, None, None, None]
    M = fires.astype(jnp.float32).reshape(b * h * w, U)
    per_image = M.reshape(b, h * w, U).sum(axis=1)

    # Pixel-level concepts, one label layer at a time.
    inter = jnp.zeros((K, U), jnp.float32)
    counts = jnp.zeros((K,), jnp.float32)
    present = jnp.zeros((b, C), bool)
    for layer in range(L):
        labels = pixel_labels[:, layer].reshape(-1)
        if labels.shape[0] * K <= _ONE_HOT_LIMIT:
            onehot = jax.nn.one_hot(labels, K, dtype=jnp.float32)
            inter = inter + jnp.matmul(onehot.T, M, precision=hi)
        else:
            inter = inter + jax.ops.segment_sum(M, labels, num_segments=K)
        counts = counts + jnp.zeros((K,), jnp.float32).at[labels].add(1.0)
        cats = label_category[pixel_labels[:, layer].reshape(b, h * w)]
        present = present | jax.nn.one_hot(cats, C, dtype=bool).any(axis=1)

    # Image-level concepts cover every pixel of their images.
    per_label = jax.nn.one_hot(image_labels, K, dtype=jnp.float32).sum(axis=1)
    inter = inter + jnp.matmul(per_label.T, per_image, precision=hi)
    counts = counts + per_label.sum(axis=0) * (h * w)
    cats = label_category[image_labels]
    present = present | jax.nn.one_hot(cats, C, dtype=bool).any(axis=1)

    activation = jnp.matmul(per_image.T, present.astype(jnp.float32), precision=hi)
    counts = counts.at[0].set(0.0)
    inter = inter.at[0].set(0.0)
    return inter.T, activation, counts


# The result.


@dataclasses.dataclass(frozen=True, eq=False)
class DissectionResult:
    """Dissection of one layer (in one basis).

    Attributes:
      thresholds: ``[U]`` activation thresholds ``T_u``.
      intersection: ``[U, K]`` int64 pixels in ``M_u`` and ``L_k``.
      activation: ``[U, C]`` int64 pixels in ``M_u`` within the images carrying a
        label of category ``c``.
      label_count: ``[K]`` int64 pixels in ``L_k``.
      label_category: ``[K]`` int32 category index of each label (-1: none).
      label_names: ``K`` concept names by label number (``""``: none).
      categories: the ``C`` category names.
    """

    thresholds: np.ndarray
    intersection: np.ndarray
    activation: np.ndarray
    label_count: np.ndarray
    label_category: np.ndarray
    label_names: tuple[str, ...]
    categories: tuple[str, ...]

    @property
    def num_units(self) -> int:
        return int(self.intersection.shape[0])

    @functools.cached_property
    def iou(self) -> np.ndarray:
        """``[U, K]`` IoU of every unit with every label (0 for unused labels)."""
        used = self.label_category >= 0
        act = self.activation[:, np.where(used, self.label_category, 0)]
        union = act + self.label_count[None, :] - self.intersection
        out = np.zeros(self.intersection.shape)
        ok = used[None, :] & (union > 0)
        np.divide(self.intersection, union, out=out, where=ok)
        return out

    @functools.cached_property
    def best_label(self) -> np.ndarray:
        """``[U]`` each unit's best label number (lowest number on ties; 0 if none)."""
        return np.argmax(self.iou, axis=1)

    @functools.cached_property
    def best_iou(self) -> np.ndarray:
        """``[U]`` each unit's best IoU."""
        return self.iou[np.arange(self.num_units), self.best_label]

    def best_concept(self, unit: int) -> tuple[str, str, float]:
        """``(name, category, IoU)`` of a unit's best concept."""
        k = int(self.best_label[unit])
        cat = self.categories[self.label_category[k]] if k else ""
        return self.label_names[k], cat, float(self.best_iou[unit])

    @property
    def mean_best_iou(self) -> float:
        """The mean over units of the best IoU."""
        return float(np.mean(self.best_iou))

    def interpretable(self, threshold: float = IOU_THRESHOLD) -> np.ndarray:
        """``[U]`` bool: units whose best IoU exceeds ``threshold``."""
        return self.best_iou > threshold

    def num_interpretable(self, threshold: float = IOU_THRESHOLD) -> int:
        """The number of units whose best IoU exceeds ``threshold``."""
        return int(np.sum(self.interpretable(threshold)))

    def unique_concepts(self, threshold: float = IOU_THRESHOLD) -> tuple[str, ...]:
        """The distinct best concepts of the interpretable units, sorted by name."""
        labels = np.unique(self.best_label[self.interpretable(threshold)])
        return tuple(sorted(self.label_names[k] for k in labels))

    def num_unique_concepts(self, threshold: float = IOU_THRESHOLD) -> int:
        """The number of distinct concepts detected by interpretable units."""
        return len(self.unique_concepts(threshold))

    def num_interpretable_by_category(
        self, threshold: float = IOU_THRESHOLD
    ) -> dict[str, int]:
        """Interpretable units counted by the category of their best concept."""
        out = dict.fromkeys(self.categories, 0)
        for k in self.best_label[self.interpretable(threshold)]:
            out[self.categories[self.label_category[k]]] += 1
        return out

    def summary(self, thresholds: Sequence[float] = SUMMARY_THRESHOLDS) -> dict:
        """A JSON-ready summary: counts at each IoU threshold and the mean best IoU."""
        return {
            "num_units": self.num_units,
            "mean_best_iou": self.mean_best_iou,
            "interpretable": {f"{t:g}": self.num_interpretable(t) for t in thresholds},
            "unique_concepts": {
                f"{t:g}": self.num_unique_concepts(t) for t in thresholds
            },
            "by_category": {
                f"{t:g}": self.num_interpretable_by_category(t) for t in thresholds
            },
        }

    def units(self) -> list[dict]:
        """One JSON-ready row per unit: best concept, category, IoU, threshold."""
        rows = []
        for u in range(self.num_units):
            name, cat, iou = self.best_concept(u)
            rows.append(
                {
                    "unit": u,
                    "concept": name,
                    "category": cat,
                    "iou": iou,
                    "threshold": float(self.thresholds[u]),
                }
            )
        return rows


# The driver.

FeatureSource = Callable[[np.ndarray], Array] | np.ndarray | Array


def _feature_batches(
    features: FeatureSource, dataset: ConceptDataset, batch_size: int
) -> Iterator[tuple[ConceptBatch, Array]]:
    """Pairs each padded dataset batch with its features."""
    if callable(features):
        for batch in dataset.batches(batch_size):
            yield batch, jnp.asarray(features(batch.images))
        return
    if features.shape[0] != len(dataset):
        raise ValueError(
            f"features has {features.shape[0]} rows but the dataset has "
            f"{len(dataset)} images; pass one row per image, in dataset order."
        )
    for start, batch in zip(
        range(0, len(dataset), batch_size), dataset.batches(batch_size), strict=True
    ):
        chunk = np.asarray(features[start : start + batch_size])
        pad = np.zeros((batch_size - chunk.shape[0], *chunk.shape[1:]), chunk.dtype)
        yield batch, jnp.asarray(np.concatenate([chunk, pad]))


def dissect_rotations(
    features: FeatureSource,
    dataset: ConceptDataset,
    rotations: Sequence[Array | None],
    *,
    quantile: float = TOP_QUANTILE,
    quantile_at: str = "features",
    batch_size: int = 100,
) -> list[DissectionResult]:
    """Dissects one layer in several bases, with one feature pass per phase.

    Args:
      features: a function from a batch of uint8 images ``[b, H, W, 3]`` to
        activations ``[b, h, w, U]`` (or ``[b, U]``), which must do its own
        preprocessing; or the activations of the whole dataset ``[N, h, w, U]``
        (or ``[N, U]``) in dataset order.
      dataset: the concept data.
      rotations: ``R`` matrices ``[U, U]`` (rows are the new units) or None for
        the layer's own units.
      quantile: the top quantile ``q`` that sets each unit's threshold.
      quantile_at: ``"features"`` takes the quantile over the feature maps' own
        positions, as NetDissect does; ``"masks"`` over the maps upsampled to
        the label resolution (the same maps that are thresholded).
      batch_size: images per batch; every batch (the last one padded) has this
        size, so a jitted ``features`` compiles once.

    Returns:
      One :class:`DissectionResult` per rotation.

    Raises:
      ValueError: empty data, bad options, rotations of the wrong shape, or
        features with NaN or infinite values.

    Note:
      Two passes over the data: thresholds, then counts, so a ``features``
      function runs twice per image (store the activations and pass the array to
      avoid this). Memory for the threshold is ``U x k`` with ``k`` about
      ``q N h w`` (``N`` images, ``h x w`` positions per map); for very large
      data sets dissect a subset. Each batch's counts must stay below ``2^24`` (so
      ``batch_size * (L + S) * h * w < 2^24`` for ``L`` label layers and ``S``
      image-label slots at mask size ``h x w``), since they are taken exactly in
      float32 on the device (matrix products at ``Precision.HIGHEST``); totals
      are summed on the host in int64.

      The union of a unit with concept ``k`` counts the unit's pixels in every
      image that carries a label of ``k``'s category. NetDissect-Lite counts them
      only in images where the unit's activated pixels overlap such a label (or
      the image has an image-level label of the category), which penalises a
      unit's false alarms less.
    """
    if not len(dataset):
        raise ValueError("dataset is empty.")
    if quantile_at not in ("features", "masks"):
        raise ValueError(
            f"quantile_at must be 'features' or 'masks', got {quantile_at!r}."
        )
    size = dataset.mask_shape if quantile_at == "masks" else None
    rotations = [None if r is None else jnp.asarray(r) for r in rotations]
    h, w = dataset.mask_shape
    L = len(dataset.layer_categories) + len(dataset.slot_categories)
    if batch_size * max(L, 1) * h * w >= _EXACT_FLOAT32:
        raise ValueError(
            f"batch_size={batch_size} makes counts of {batch_size}*{L}*{h}*{w} pixels, "
            f"beyond exact float32 ({_EXACT_FLOAT32}); lower batch_size."
        )
    label_category = dataset.label_category()
    K, C = dataset.num_labels, len(dataset.categories)

    # Pass 1: exact thresholds from the streaming top-k of every basis.
    tops: list[Array | None] = [None] * len(rotations)
    num_values = k = None
    finite = jnp.asarray(True)
    for batch, feats in _feature_batches(features, dataset, batch_size):
        finite = finite & jnp.isfinite(feats).all()
        maps = _as_maps(feats)
        if k is None:
            h_q, w_q = size if size is not None else maps.shape[1:3]
            num_values = len(dataset) * h_q * w_q
            k, _ = quantile_plan(num_values, quantile)
            _check_rotations(rotations, maps.shape[-1])
        valid = jnp.arange(batch_size) < batch.num_valid
        for r, R in enumerate(rotations):
            tops[r] = top_k_update(tops[r], maps, valid, R, k=k, size=size)
    if not bool(finite):
        raise ValueError(
            "features contain NaN or infinite values, which would silently move "
            "the thresholds (NaN sorts above every number); check the model's "
            "weights and inputs."
        )
    thresholds = [quantile_threshold(t, num_values, quantile) for t in tops]
    logger.info("dissection thresholds done (%d values per unit)", num_values)

    # Pass 2: stream the counts.
    U = int(thresholds[0].shape[0])
    inter = [np.zeros((U, K), np.int64) for _ in rotations]
    act = [np.zeros((U, C), np.int64) for _ in rotations]
    counts = np.zeros((K,), np.int64)
    lc = jnp.asarray(label_category)
    for batch, feats in _feature_batches(features, dataset, batch_size):
        valid = jnp.arange(batch_size) < batch.num_valid
        for r, R in enumerate(rotations):
            i_b, a_b, c_b = tally_batch(
                feats,
                jnp.asarray(thresholds[r]),
                jnp.asarray(batch.pixel_labels),
                jnp.asarray(batch.image_labels),
                valid,
                lc,
                R,
                num_labels=K,
                num_categories=C,
            )
            inter[r] += np.rint(np.asarray(i_b)).astype(np.int64)
            act[r] += np.rint(np.asarray(a_b)).astype(np.int64)
            if r == 0:
                counts += np.rint(np.asarray(c_b)).astype(np.int64)
    logger.info("dissection counts done (%d images)", len(dataset))

    names = [""] * K
    for c in dataset.concepts:
        names[c.number] = c.name
    return [
        DissectionResult(
            thresholds=np.asarray(t),
            intersection=i,
            activation=a,
            label_count=counts,
            label_category=label_category,
            label_names=tuple(names),
            categories=tuple(dataset.categories),
        )
        for t, i, a in zip(thresholds, inter, act, strict=True)
    ]


def _check_rotations(rotations: Sequence[Array | None], U: int) -> None:
    for R in rotations:
        if R is not None and R.shape != (U, U):
            raise ValueError(
                f"each rotation must be [U, U] = [{U}, {U}] for this layer, "
                f"got {R.shape}."
            )


def dissect(
    features: FeatureSource,
    dataset: ConceptDataset,
    rotation: Array | None = None,
    *,
    quantile: float = TOP_QUANTILE,
    quantile_at: str = "features",
    batch_size: int = 100,
) -> DissectionResult:
    """Dissects one layer: each unit's best concept and IoU (Bau et al., 2017).

    Args:
      features: a function from uint8 images ``[b, H, W, 3]`` to activations
        ``[b, h, w, U]`` (or ``[b, U]``), or the dataset's activations
        ``[N, h, w, U]`` (or ``[N, U]``) in dataset order.
      dataset: the concept data.
      rotation: ``[U, U]``; if given, the units are the rows of ``rotation``
        applied to the channel axis (paper Section 6, ``Q^alpha``) before
        thresholds are computed.
      quantile: the top quantile ``q`` that sets each unit's threshold.
      quantile_at: ``"features"`` (NetDissect) or ``"masks"``: the positions the
        quantile is taken over, see :func:`dissect_rotations`.
      batch_size: images per batch.

    Returns:
      A :class:`DissectionResult`; see :func:`dissect_rotations` for details.

    Example:
      >>> result = dissect(lambda x: model_features(x), concepts)  # doctest: +SKIP
      >>> result.num_interpretable(), result.mean_best_iou  # doctest: +SKIP
    """
    return dissect_rotations(
        features,
        dataset,
        [rotation],
        quantile=quantile,
        quantile_at=quantile_at,
        batch_size=batch_size,
    )[0]
