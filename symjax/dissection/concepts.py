"""Concept-segmentation datasets: images with per-pixel concept labels.

Network dissection (Bau et al., 2017, "Network Dissection: Quantifying
Interpretability of Deep Visual Representations") scores a unit against a set of
*concepts*, each with a pixel mask in every image. The data model follows the
Broden dataset of that paper:

* every concept has a positive integer *label number* (0 means "no label") and
  belongs to a *category* (Broden's are color, object, part, material, scene,
  texture);
* a *pixel* category labels each pixel, in one or more *layers* of label numbers
  (several layers when labels overlap, e.g. a part inside an object);
* an *image-level* category (Broden's scene and texture) attaches a few label
  numbers to a whole image; such a concept's mask is every pixel of the image.

A :class:`ConceptDataset` hands out :class:`ConceptBatch` es of fixed shape: the
images, the pixel labels ``[b, L, h, w]`` (``L`` layers in a fixed order of
categories, zero-padded) and the image labels ``[b, S]`` (zero-padded), so that
jitted statistics compile once. :class:`ArrayConcepts` holds everything in
memory; :mod:`symjax.dissection.broden` reads Broden-format folders lazily.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class Concept:
    """One concept.

    Attributes:
      number: the label number (positive; 0 is reserved for "no label").
      name: the concept's name (Broden spelling, e.g. ``"red-c"``).
      category: the concept's (primary) category, e.g. ``"color"``.
    """

    number: int
    name: str
    category: str


@dataclasses.dataclass(frozen=True)
class ConceptRecord:
    """The labels of one image, by category.

    Attributes:
      image: ``[H, W, 3]`` uint8 image.
      pixel_labels: for each pixel category, ``[L_c, h, w]`` int32 label numbers
        (0 = none); ``L_c`` may be 0 when the image has no label in the category.
      image_labels: for each image-level category, the tuple of label numbers
        that apply to the whole image (dominant first).
      name: a relative path identifying the image (used by the Broden writer).
      split: the split the image belongs to (e.g. ``"train"``, ``"val"``).
    """

    image: np.ndarray
    pixel_labels: dict[str, np.ndarray]
    image_labels: dict[str, tuple[int, ...]]
    name: str
    split: str = "val"


class ConceptBatch(NamedTuple):
    """A fixed-shape batch of a :class:`ConceptDataset`.

    Attributes:
      images: ``[b, H, W, 3]`` uint8 images; rows past ``num_valid`` are zeros.
      pixel_labels: ``[b, L, h, w]`` int32 label numbers (0 = none), the layers in
        the order of :attr:`ConceptDataset.layer_categories`.
      image_labels: ``[b, S]`` int32 label numbers (0 = none), the slots in the
        order of :attr:`ConceptDataset.slot_categories`.
      num_valid: how many leading rows are real images (the last batch of a
        dataset is padded to the batch size with empty rows).
    """

    images: np.ndarray
    pixel_labels: np.ndarray
    image_labels: np.ndarray
    num_valid: int


class ConceptDataset(abc.ABC):
    """Images with per-pixel concept labels (the interface dissection consumes).

    Subclasses provide :attr:`concepts`, :attr:`categories`,
    :attr:`image_level_categories`, :attr:`layer_categories`,
    :attr:`slot_categories`, :attr:`image_shape`, :attr:`mask_shape`,
    ``__len__`` and :meth:`record`; :meth:`batches` assembles fixed-shape batches
    from records and may be overridden for speed.
    """

    @property
    @abc.abstractmethod
    def concepts(self) -> tuple[Concept, ...]:
        """All concepts, sorted by label number."""

    @property
    @abc.abstractmethod
    def categories(self) -> tuple[str, ...]:
        """The category names, in the dataset's order."""

    @property
    @abc.abstractmethod
    def image_level_categories(self) -> frozenset[str]:
        """The categories whose labels apply to whole images."""

    @property
    @abc.abstractmethod
    def layer_categories(self) -> tuple[str, ...]:
        """The category of each pixel-label layer of a batch (length ``L``)."""

    @property
    @abc.abstractmethod
    def slot_categories(self) -> tuple[str, ...]:
        """The category of each image-label slot of a batch (length ``S``)."""

    @property
    @abc.abstractmethod
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)`` of every image."""

    @property
    @abc.abstractmethod
    def mask_shape(self) -> tuple[int, int]:
        """``(h, w)`` of every label mask."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def record(self, i: int) -> ConceptRecord:
        """The labels of image ``i``."""

    @property
    def num_labels(self) -> int:
        """One more than the largest label number (the size of label-indexed arrays)."""
        return 1 + max((c.number for c in self.concepts), default=0)

    def concept_table(self) -> dict[int, Concept]:
        """The concepts by label number."""
        return {c.number: c for c in self.concepts}

    def label_category(self) -> np.ndarray:
        """``[num_labels]`` int32: each label's category index (-1: unused)."""
        out = np.full((self.num_labels,), -1, np.int32)
        index = {c: k for k, c in enumerate(self.categories)}
        for c in self.concepts:
            out[c.number] = index[c.category]
        return out

    def batches(
        self, batch_size: int, indices: Sequence[int] | None = None
    ) -> Iterator[ConceptBatch]:
        """Fixed-shape batches over ``indices`` (all images, in order, if None).

        The last batch is padded to ``batch_size`` with zero images and no labels;
        its ``num_valid`` says how many rows are real.
        """
        _check_batch_size(batch_size)
        indices = range(len(self)) if indices is None else indices
        indices = list(indices)
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            yield self._assemble([self.record(i) for i in chunk], batch_size)

    def _assemble(self, records: list[ConceptRecord], batch_size: int) -> ConceptBatch:
        """Stacks records into a padded :class:`ConceptBatch`."""
        H, W = self.image_shape
        h, w = self.mask_shape
        images = np.zeros((batch_size, H, W, 3), np.uint8)
        pixel = np.zeros((batch_size, len(self.layer_categories), h, w), np.int32)
        scalar = np.zeros((batch_size, len(self.slot_categories)), np.int32)
        for b, rec in enumerate(records):
            images[b] = rec.image
            pixel[b] = _layers_of(rec, self.layer_categories, (h, w))
            scalar[b] = _slots_of(rec, self.slot_categories)
        return ConceptBatch(images, pixel, scalar, len(records))


def _check_batch_size(batch_size) -> None:
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")


def _layers_of(
    rec: ConceptRecord, layer_categories: Sequence[str], mask_shape: tuple[int, int]
) -> np.ndarray:
    """A record's pixel labels as ``[L, h, w]`` in the given layer layout."""
    out = np.zeros((len(layer_categories), *mask_shape), np.int32)
    used: dict[str, int] = {}
    for k, cat in enumerate(layer_categories):
        layers = rec.pixel_labels.get(cat)
        j = used.get(cat, 0)
        if layers is not None and j < len(layers):
            out[k] = layers[j]
        used[cat] = j + 1
    for cat, layers in rec.pixel_labels.items():
        extra = np.asarray(layers)[used.get(cat, 0) :]
        if np.any(extra):
            raise ValueError(
                f"record {rec.name!r} has more nonzero {cat!r} layers than the "
                f"dataset's layout holds ({used.get(cat, 0)})."
            )
    return out


def _slots_of(rec: ConceptRecord, slot_categories: Sequence[str]) -> np.ndarray:
    """A record's image labels as ``[S]`` in the given slot layout."""
    out = np.zeros((len(slot_categories),), np.int32)
    used: dict[str, int] = {}
    for k, cat in enumerate(slot_categories):
        labels = rec.image_labels.get(cat, ())
        j = used.get(cat, 0)
        if j < len(labels):
            out[k] = labels[j]
        used[cat] = j + 1
    for cat, labels in rec.image_labels.items():
        if len(labels) > used.get(cat, 0):
            raise ValueError(
                f"record {rec.name!r} has more {cat!r} labels than the dataset's "
                f"layout holds ({used.get(cat, 0)})."
            )
    return out


def layout(
    categories: Sequence[str], image_level: frozenset[str], counts: dict[str, int]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The layer and slot layouts for ``counts[cat]`` layers (or labels) per category.

    Returns:
      ``(layer_categories, slot_categories)``, each in the order of ``categories``.
    """
    layers = tuple(
        c for c in categories if c not in image_level for _ in range(counts.get(c, 0))
    )
    slots = tuple(
        c for c in categories if c in image_level for _ in range(counts.get(c, 0))
    )
    return layers, slots


def validate_concepts(
    concepts: Sequence[Concept], categories: Sequence[str]
) -> tuple[Concept, ...]:
    """Sorts concepts by number and checks numbers, names and categories."""
    concepts = tuple(sorted(concepts, key=lambda c: c.number))
    numbers = [c.number for c in concepts]
    if any(n < 1 for n in numbers) or len(set(numbers)) != len(numbers):
        raise ValueError("concepts must have distinct label numbers >= 1.")
    unknown = {c.category for c in concepts} - set(categories)
    if unknown:
        raise ValueError(
            f"concepts use categories {sorted(unknown)} missing from categories="
            f"{tuple(categories)}; add them."
        )
    return concepts


class ArrayConcepts(ConceptDataset):
    """A concept dataset held in memory as arrays.

    Args:
      images: ``[n, H, W, 3]`` uint8 images.
      pixel_labels: ``[n, L, h, w]`` integer label numbers (0 = none).
      image_labels: ``[n, S]`` integer label numbers (0 = none).
      concepts: every concept that may occur.
      categories: the category names, in order.
      image_level_categories: the categories whose labels cover whole images.
      layer_categories: the category of each of the ``L`` layers, grouped in the
        order of ``categories``.
      slot_categories: the category of each of the ``S`` slots, likewise.
      names: ``n`` relative image paths; ``"images/{i:06d}.png"`` if None.
      splits: ``n`` split names; all ``"val"`` if None.
    """

    def __init__(
        self,
        images: np.ndarray,
        pixel_labels: np.ndarray,
        image_labels: np.ndarray,
        concepts: Sequence[Concept],
        categories: Sequence[str],
        image_level_categories: Sequence[str],
        layer_categories: Sequence[str],
        slot_categories: Sequence[str],
        names: Sequence[str] | None = None,
        splits: Sequence[str] | None = None,
    ):
        images = np.asarray(images)
        pixel_labels = np.asarray(pixel_labels)
        image_labels = np.asarray(image_labels)
        n = images.shape[0]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"images must be uint8 [n, H, W, 3], got {images.dtype} {images.shape}."
            )
        if pixel_labels.ndim != 4 or pixel_labels.shape[:2] != (
            n,
            len(layer_categories),
        ):
            raise ValueError(
                f"pixel_labels must be [n={n}, L={len(layer_categories)}, h, w], "
                f"got {pixel_labels.shape}."
            )
        if image_labels.shape != (n, len(slot_categories)):
            raise ValueError(
                f"image_labels must be [n={n}, S={len(slot_categories)}], "
                f"got {image_labels.shape}."
            )
        self._categories = tuple(categories)
        self._image_level = frozenset(image_level_categories)
        self._concepts = validate_concepts(concepts, self._categories)
        want = layout(
            self._categories,
            self._image_level,
            {c: list(layer_categories).count(c) for c in self._categories}
            | {c: list(slot_categories).count(c) for c in self._image_level},
        )
        if want != (tuple(layer_categories), tuple(slot_categories)):
            raise ValueError(
                "layer_categories and slot_categories must be pixel and image-level "
                f"categories grouped in the order of categories={self._categories}."
            )
        known = np.zeros((self.num_labels,), bool)
        known[[c.number for c in self._concepts]] = True
        known[0] = True
        for arr, what in (
            (pixel_labels, "pixel_labels"),
            (image_labels, "image_labels"),
        ):
            if arr.size and (arr.min() < 0 or arr.max() >= self.num_labels):
                raise ValueError(f"{what} holds label numbers with no concept.")
            if arr.size and not known[arr].all():
                raise ValueError(f"{what} holds label numbers with no concept.")
        self._images = images
        self._pixel = pixel_labels.astype(np.int32)
        self._scalar = image_labels.astype(np.int32)
        self._layers = tuple(layer_categories)
        self._slots = tuple(slot_categories)
        self._names = (
            tuple(names)
            if names is not None
            else tuple(f"{i:06d}.png" for i in range(n))
        )
        self._splits = tuple(splits) if splits is not None else ("val",) * n
        if len(self._names) != n or len(self._splits) != n:
            raise ValueError(f"names and splits must have n={n} entries.")

    concepts = property(lambda self: self._concepts)
    categories = property(lambda self: self._categories)
    image_level_categories = property(lambda self: self._image_level)
    layer_categories = property(lambda self: self._layers)
    slot_categories = property(lambda self: self._slots)
    image_shape = property(lambda self: tuple(self._images.shape[1:3]))
    mask_shape = property(lambda self: tuple(self._pixel.shape[2:4]))

    @property
    def images(self) -> np.ndarray:
        """``[n, H, W, 3]`` uint8 images."""
        return self._images

    @property
    def pixel_labels(self) -> np.ndarray:
        """``[n, L, h, w]`` int32 label numbers."""
        return self._pixel

    @property
    def image_labels(self) -> np.ndarray:
        """``[n, S]`` int32 label numbers."""
        return self._scalar

    def __len__(self) -> int:
        return self._images.shape[0]

    def record(self, i: int) -> ConceptRecord:
        pixel: dict[str, list[np.ndarray]] = {}
        for k, cat in enumerate(self._layers):
            pixel.setdefault(cat, []).append(self._pixel[i, k])
        scalar: dict[str, list[int]] = {}
        for k, cat in enumerate(self._slots):
            if self._scalar[i, k]:
                scalar.setdefault(cat, []).append(int(self._scalar[i, k]))
        return ConceptRecord(
            image=self._images[i],
            pixel_labels={c: np.stack(v) for c, v in pixel.items()},
            image_labels={c: tuple(v) for c, v in scalar.items()},
            name=self._names[i],
            split=self._splits[i],
        )

    def batches(
        self, batch_size: int, indices: Sequence[int] | None = None
    ) -> Iterator[ConceptBatch]:
        _check_batch_size(batch_size)
        indices = np.arange(len(self)) if indices is None else np.asarray(indices)
        for start in range(0, len(indices), batch_size):
            idx = indices[start : start + batch_size]
            pad = batch_size - len(idx)

            def padded(a, idx=idx, pad=pad):
                return np.concatenate([a[idx], np.zeros((pad, *a.shape[1:]), a.dtype)])

            yield ConceptBatch(
                padded(self._images),
                padded(self._pixel),
                padded(self._scalar),
                len(idx),
            )

    def subset(self, indices: Sequence[int]) -> ArrayConcepts:
        """The dataset restricted to ``indices`` (in that order)."""
        idx = np.asarray(indices)
        return ArrayConcepts(
            self._images[idx],
            self._pixel[idx],
            self._scalar[idx],
            self._concepts,
            self._categories,
            tuple(self._image_level),
            self._layers,
            self._slots,
            [self._names[i] for i in idx],
            [self._splits[i] for i in idx],
        )
