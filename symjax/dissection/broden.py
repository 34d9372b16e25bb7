"""Reading and writing concept data in the Broden format (Bau et al., 2017).

A Broden folder holds

* ``index.csv``: one row per image, columns ``image, split, ih, iw, sh, sw``
  followed by one column per category. ``image`` is a path under ``images/``;
  ``ih x iw`` is the image size and ``sh x sw`` the label size. A pixel
  category's cell lists label images (PNG paths under ``images/``, one per
  layer, separated by ``;``), an image-level category's cell lists label numbers
  (``;``-separated); an empty cell means no label of that category.
* ``label.csv``: ``number, name, category, frequency, coverage, syns``; the
  ``category`` cell reads like ``material(36);object(3)`` (the number of images
  in which the label occurs in each category).
* ``category.csv``: ``name, first, last, count, frequency``.
* ``c_<category>.csv``: ``code, number, name, frequency, coverage``, a dense
  per-category coding of the labels.

A label PNG stores label number ``R + 256 G`` at each pixel (so numbers above
255 fit). :func:`read_broden` reads such a folder, whether the real Broden or one
written by :func:`write_broden`; both go through
:class:`~symjax.dissection.ConceptDataset`.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np

from symjax.dissection.concepts import (
    Concept,
    ConceptBatch,
    ConceptDataset,
    ConceptRecord,
    _check_batch_size,
    layout,
)

logger = logging.getLogger(__name__)
_META = ("image", "split", "ih", "iw", "sh", "sw")
_CATEGORY_CELL = re.compile(r"^([^(]*)\(([^)]*)\)$")


def encode_labels(labels: np.ndarray) -> np.ndarray:
    """Label numbers ``[h, w]`` as RGB: ``R = n % 256``, ``G = n // 256``, ``B = 0``.

    Raises:
      ValueError: for numbers outside ``[0, 65535]``.
    """
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise ValueError("label numbers must lie in [0, 65535] to fit R + 256 G.")
    rgb = np.zeros((*labels.shape, 3), np.uint8)
    rgb[..., 0] = labels % 256
    rgb[..., 1] = labels // 256
    return rgb


def decode_labels(rgb: np.ndarray) -> np.ndarray:
    """An RGB label image ``[h, w, 3]`` (or gray ``[h, w]``) as ``R + 256 G``."""
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        return rgb.astype(np.int32)
    return rgb[..., 0].astype(np.int32) + 256 * rgb[..., 1].astype(np.int32)


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("RGB", "RGBA", "L", "I", "I;16"):
            im = im.convert("RGB")
        return np.asarray(im)


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write_csv(path: Path, fields: Sequence[str], rows: Sequence[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)


def _parse_category_cell(cell: str) -> list[tuple[str, int]]:
    """``"material(36);object(3)"`` -> ``[("material", 36), ("object", 3)]``."""
    out = []
    for part in filter(None, cell.split(";")):
        m = _CATEGORY_CELL.match(part.strip())
        if m is None:
            raise ValueError(
                f"label.csv category cell {cell!r} is not 'name(count);...'."
            )
        out.append((m.group(1), int(float(m.group(2)))))
    return out


class BrodenConcepts(ConceptDataset):
    """A Broden-format folder, read lazily image by image.

    Use :func:`read_broden` to open one.

    Each concept's category is the category listed first with the largest count
    in ``label.csv`` (NetDissect picks a primary category by coverage instead);
    labels listed under no category take the first ``c_*.csv`` that codes them.
    Pixels whose label number has no concept read as 0. A category is
    image-level when its non-empty ``index.csv`` cells hold numbers, pixel-level
    when they hold PNG paths.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        categories: Sequence[str] | None = None,
        split: str | None = None,
        num_workers: int = 8,
    ):
        self.directory = Path(directory).expanduser()
        for name in ("index.csv", "label.csv", "category.csv"):
            if not (self.directory / name).is_file():
                raise ValueError(
                    f"{self.directory} is not a Broden folder: {name} is missing."
                )
        self.num_workers = num_workers

        # Categories, in category.csv order, optionally restricted.
        all_categories = [r["name"] for r in _read_csv(self.directory / "category.csv")]
        if categories is not None:
            unknown = set(categories) - set(all_categories)
            if unknown:
                raise ValueError(
                    f"categories {sorted(unknown)} are not in category.csv "
                    f"({all_categories})."
                )
            all_categories = [c for c in all_categories if c in set(categories)]
        self._categories = tuple(all_categories)

        # Images, optionally one split, with their per-category cells.
        rows = _read_csv(self.directory / "index.csv")
        if split is not None:
            rows = [r for r in rows if r["split"] == split]
        if not rows:
            raise ValueError(f"index.csv has no images (split={split!r}).")
        self._rows = [self._parse_row(r) for r in rows]
        shapes = {(r["ih"], r["iw"], r["sh"], r["sw"]) for r in self._rows}
        if len(shapes) != 1:
            raise ValueError(
                f"images of several sizes {sorted(shapes)[:4]}; dissection batches "
                "need one image size and one label size."
            )
        ih, iw, sh, sw = shapes.pop()
        self._image_shape, self._mask_shape = (ih, iw), (sh, sw)

        # Image-level categories hold numbers; the layout takes the most entries.
        image_level, counts = set(), {}
        for cat in self._categories:
            cells = [r[cat] for r in self._rows if r[cat]]
            if cells and all(isinstance(x, int) for cell in cells for x in cell):
                image_level.add(cat)
            counts[cat] = max((len(cell) for cell in cells), default=0)
        self._image_level = frozenset(image_level)
        self._layers, self._slots = layout(self._categories, self._image_level, counts)
        self._concepts = self._read_concepts()
        self._known = np.zeros((self.num_labels,), bool)
        self._known[[c.number for c in self._concepts]] = True

    def _parse_row(self, row: dict[str, str]) -> dict:
        out = {"image": row["image"], "split": row["split"]}
        for key in ("ih", "iw", "sh", "sw"):
            out[key] = int(row[key])
        for cat in self._categories:
            cell = []
            for entry in filter(None, (row.get(cat) or "").split(";")):
                cell.append(int(entry) if entry.strip().isdigit() else entry.strip())
            out[cat] = cell
        return out

    def _read_concepts(self) -> tuple[Concept, ...]:
        coded: dict[int, str] = {}
        for cat in self._categories:
            path = self.directory / f"c_{cat}.csv"
            if path.is_file():
                for r in _read_csv(path):
                    coded.setdefault(int(r["number"]), cat)
        concepts = []
        for r in _read_csv(self.directory / "label.csv"):
            number = int(r["number"])
            listed = [
                (c, n) for c, n in _parse_category_cell(r.get("category") or "")
                if c in self._categories
            ]  # fmt: skip
            if listed:
                best = max(n for _, n in listed)
                category = next(c for c, n in listed if n == best)
            elif number in coded:
                category = coded[number]
            else:
                continue
            if number >= 1:
                concepts.append(Concept(number, r["name"], category))
        return tuple(sorted(concepts, key=lambda c: c.number))

    concepts = property(lambda self: self._concepts)
    categories = property(lambda self: self._categories)
    image_level_categories = property(lambda self: self._image_level)
    layer_categories = property(lambda self: self._layers)
    slot_categories = property(lambda self: self._slots)
    image_shape = property(lambda self: self._image_shape)
    mask_shape = property(lambda self: self._mask_shape)

    def __len__(self) -> int:
        return len(self._rows)

    def _labels(self, path: str) -> np.ndarray:
        labels = decode_labels(_read_png(self.directory / "images" / path))
        if labels.shape != self._mask_shape:
            raise ValueError(
                f"label image {path} is {labels.shape}; index.csv says "
                f"{self._mask_shape}."
            )
        inside = labels < self.num_labels
        clean = np.where(inside, labels, 0)
        return np.where(self._known[clean], clean, 0).astype(np.int32)

    def record(self, i: int) -> ConceptRecord:
        row = self._rows[i]
        image = _read_png(self.directory / "images" / row["image"])
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        image = np.ascontiguousarray(image[..., :3]).astype(np.uint8)
        if image.shape[:2] != self._image_shape:
            raise ValueError(
                f"image {row['image']} is {image.shape[:2]}, index.csv says "
                f"{self._image_shape}."
            )
        pixel, scalar = {}, {}
        for cat in self._categories:
            cell = row[cat]
            if cat in self._image_level:
                numbers = [
                    n for n in cell if 0 < n < self.num_labels and self._known[n]
                ]
                scalar[cat] = tuple(numbers)
            elif cell:
                pixel[cat] = np.stack([self._labels(p) for p in cell])
        return ConceptRecord(image, pixel, scalar, row["image"], row["split"])

    def batches(
        self, batch_size: int, indices: Sequence[int] | None = None
    ) -> Iterator[ConceptBatch]:
        _check_batch_size(batch_size)
        indices = list(range(len(self)) if indices is None else indices)
        with ThreadPoolExecutor(max(1, self.num_workers)) as pool:
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                yield self._assemble(list(pool.map(self.record, chunk)), batch_size)


def read_broden(
    directory: str | os.PathLike,
    categories: Sequence[str] | None = None,
    split: str | None = None,
    num_workers: int = 8,
) -> BrodenConcepts:
    """Opens a Broden-format folder as a :class:`~symjax.dissection.ConceptDataset`.

    Args:
      directory: the folder holding ``index.csv``, ``label.csv``,
        ``category.csv``, ``c_*.csv`` and ``images/``.
      categories: the categories to keep (all if None).
      split: keep only the images of this split (e.g. ``"train"``), or all.
      num_workers: threads that decode images while a batch is assembled.

    Returns:
      A :class:`BrodenConcepts`.

    Note:
      Dissection batches need one image size and one label size, which the real
      Broden satisfies within each release (e.g. ``broden1_224``: images
      ``224 x 224``, labels ``112 x 112``).
    """
    return BrodenConcepts(directory, categories, split, num_workers)


def _png_name(name: str) -> str:
    """A record name as a relative POSIX path ending in ``.png``."""
    path = PurePosixPath(name.replace(os.sep, "/"))
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"record name {name!r} must be a relative path without '..'.")
    return str(path.with_suffix(".png"))


def write_broden(dataset: ConceptDataset, directory: str | os.PathLike) -> Path:
    """Writes a concept dataset as a Broden-format folder.

    Images and label images are written as PNG (lossless), each image under
    ``images/<name>.png`` with its labels beside it as
    ``<name>_<category>.png`` (later layers ``<name>_<category>_<j>.png``). A
    label image is written only for a layer that holds a label, and an
    image-level cell lists only nonzero numbers, so an empty cell means "no
    label" as in Broden. ``label.csv`` lists every concept of the dataset, with
    ``<category>(0)`` for a concept that never occurs, so that its category
    survives a round trip.

    Args:
      dataset: the concept data.
      directory: the folder to create (it must not hold an ``index.csv``).

    Returns:
      The folder's path.
    """
    directory = Path(directory)
    if (directory / "index.csv").exists():
        raise ValueError(
            f"{directory} already holds a Broden index.csv; pick a new folder."
        )
    (directory / "images").mkdir(parents=True, exist_ok=True)
    K = dataset.num_labels
    frequency = np.zeros((K,), np.int64)
    coverage = np.zeros((K,), np.float64)
    cat_frequency = dict.fromkeys(dataset.categories, 0)
    seen = set()
    index_rows = []

    # Images and label images, accumulating per-label statistics.
    for i in range(len(dataset)):
        rec = dataset.record(i)
        name = _png_name(rec.name)
        if name in seen:
            raise ValueError(f"two records are named {rec.name!r}; names must differ.")
        seen.add(name)
        _write_png(directory / "images" / name, np.asarray(rec.image, np.uint8))
        stem = name[: -len(".png")]
        row = {"image": name, "split": rec.split}
        row["ih"], row["iw"] = rec.image.shape[:2]
        row["sh"], row["sw"] = dataset.mask_shape
        present = np.zeros((K,), float)
        for cat in dataset.categories:
            cells = []
            if cat in dataset.image_level_categories:
                numbers = [int(n) for n in rec.image_labels.get(cat, ()) if n]
                cells = [str(n) for n in numbers]
                for n in numbers:
                    present[n] = max(present[n], 1.0)
            else:
                for j, layer in enumerate(rec.pixel_labels.get(cat, ())):
                    if not np.any(layer):
                        continue
                    path = f"{stem}_{cat}.png" if j == 0 else f"{stem}_{cat}_{j}.png"
                    _write_png(directory / "images" / path, encode_labels(layer))
                    cells.append(path)
                    hist = np.bincount(np.ravel(layer), minlength=K)[:K]
                    present += hist / layer.size
            row[cat] = ";".join(cells)
            cat_frequency[cat] += bool(cells)
        present[0] = 0.0
        frequency += present > 0
        coverage += present
        index_rows.append(row)
    _write_csv(directory / "index.csv", [*_META, *dataset.categories], index_rows)

    # Label, category and per-category code tables.
    concepts = sorted(dataset.concepts, key=lambda c: c.number)
    _write_csv(
        directory / "label.csv",
        ["number", "name", "category", "frequency", "coverage", "syns"],
        [
            {
                "number": c.number,
                "name": c.name,
                "category": f"{c.category}({frequency[c.number]})",
                "frequency": frequency[c.number],
                "coverage": f"{coverage[c.number]:.6f}",
                "syns": "",
            }
            for c in concepts
        ],
    )
    cat_rows = []
    for cat in dataset.categories:
        members = [c for c in concepts if c.category == cat]
        numbers = [c.number for c in members] or [0]
        cat_rows.append(
            {
                "name": cat,
                "first": min(numbers),
                "last": max(numbers),
                "count": len(members),
                "frequency": cat_frequency[cat],
            }
        )
        ranked = sorted(members, key=lambda c: (-frequency[c.number], c.number))
        _write_csv(
            directory / f"c_{cat}.csv",
            ["code", "number", "name", "frequency", "coverage"],
            [
                {
                    "code": code,
                    "number": c.number,
                    "name": c.name,
                    "frequency": frequency[c.number],
                    "coverage": f"{coverage[c.number]:.6f}",
                }
                for code, c in enumerate(ranked, start=1)
            ],
        )
    _write_csv(
        directory / "category.csv",
        ["name", "first", "last", "count", "frequency"],
        cat_rows,
    )
    logger.info("wrote %d images in Broden format to %s", len(dataset), directory)
    return directory
