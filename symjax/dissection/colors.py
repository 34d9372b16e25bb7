"""Per-pixel colour concepts on real images, named as Broden names its colours.

Broden's colour category labels every pixel with one of eleven basic colour
terms, taking the most probable name of the pixel's RGB value under the
colour-naming model of van de Weijer et al. (2009, "Learning Color Names for
Real-World Applications"). That model is tabulated on a ``32 x 32 x 32`` RGB grid
(``table[R // 8, G // 8, B // 8]``, the ``w2color.npy`` table of NetDissect), so
applying it to real images, such as CIFAR-10's, gives real colour-concept masks
with no download. Concept names carry Broden's ``-c`` suffix (``"red-c"``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from symjax.dissection.concepts import ArrayConcepts, Concept

#: The eleven colour terms, in the order of the table's values 0..10.
COLOR_TERMS = (
    "black",
    "blue",
    "brown",
    "grey",
    "green",
    "orange",
    "pink",
    "purple",
    "red",
    "white",
    "yellow",
)
#: Broden's names of the colour concepts.
COLOR_NAMES = tuple(f"{t}-c" for t in COLOR_TERMS)
COLOR_CATEGORY = "color"
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_REPO = Path(__file__).resolve().parents[2]


def default_color_table_path() -> Path:
    """``$SYMJAX_COLOR_TABLE``, else ``../shared/data/color-names/w2color.npy``."""
    env = os.environ.get("SYMJAX_COLOR_TABLE")
    return Path(env) if env else _REPO.parent / "shared/data/color-names/w2color.npy"


def load_color_table(path: str | os.PathLike | None = None) -> np.ndarray:
    """The colour-name table: ``[32, 32, 32]`` uint8 with values in ``0..10``.

    Args:
      path: the ``.npy`` file; :func:`default_color_table_path` if None.
    """
    path = Path(path) if path is not None else default_color_table_path()
    if not path.is_file():
        raise ValueError(
            f"no colour table at {path}; pass path= or set SYMJAX_COLOR_TABLE to "
            "the w2color.npy file."
        )
    table = np.load(path, allow_pickle=False)
    if table.shape != (32, 32, 32) or table.max() >= len(COLOR_TERMS):
        raise ValueError(
            f"{path} is not a colour table: want [32, 32, 32] values in 0..10, "
            f"got {table.shape} with max {table.max()}."
        )
    return table.astype(np.uint8)


def color_index(images: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The colour term of every pixel: ``table[R // 8, G // 8, B // 8]``.

    Args:
      images: ``[..., 3]`` uint8 RGB.
      table: ``[32, 32, 32]`` colour table.

    Returns:
      ``[...]`` uint8 indices into :data:`COLOR_TERMS`.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[-1] != 3:
        raise ValueError(
            f"images must be uint8 [..., 3], got {images.dtype} {images.shape}."
        )
    q = images >> 3
    return table[q[..., 0], q[..., 1], q[..., 2]]


def color_concept_list(first_number: int = 1) -> tuple[Concept, ...]:
    """The colour concepts, numbered ``first_number, first_number + 1, ...``."""
    return tuple(
        Concept(first_number + k, name, COLOR_CATEGORY)
        for k, name in enumerate(COLOR_NAMES)
    )


def color_concepts(
    images: np.ndarray,
    table: np.ndarray | None = None,
    *,
    names: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
) -> ArrayConcepts:
    """Colour-concept data on given images: one ``color`` label per pixel.

    Args:
      images: ``[n, H, W, 3]`` uint8 RGB images.
      table: the colour table; :func:`load_color_table` if None.
      names: ``n`` relative image paths (for the Broden writer).
      splits: ``n`` split names.

    Returns:
      An :class:`ArrayConcepts` with category ``color``, concepts numbered 1..11
      in the order of :data:`COLOR_NAMES`, and masks at image resolution.
    """
    table = load_color_table() if table is None else table
    images = np.asarray(images)
    labels = color_index(images, table).astype(np.int32) + 1
    return ArrayConcepts(
        images=images,
        pixel_labels=labels[:, None],
        image_labels=np.zeros((images.shape[0], 0), np.int32),
        concepts=color_concept_list(1),
        categories=(COLOR_CATEGORY,),
        image_level_categories=(),
        layer_categories=(COLOR_CATEGORY,),
        slot_categories=(),
        names=names,
        splits=splits,
    )


def default_cifar10_dir() -> Path:
    """``$SYMJAX_DATA_DIR``, else ``../shared/data/cifar10``."""
    env = os.environ.get("SYMJAX_DATA_DIR")
    return Path(env) if env else _REPO.parent / "shared/data/cifar10"


def read_image_folder(
    root: str | os.PathLike, per_class: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Reads an image-folder split ``root/<class>/<file>`` in sorted order.

    Args:
      root: the split folder (e.g. ``cifar10/test``).
      per_class: the first this many files of each class (all if None).

    Returns:
      ``images`` ``[n, H, W, 3]`` uint8, ``labels`` ``[n]`` int32 class indices
      (sorted folder names), and the ``n`` paths relative to ``root``'s parent.
    """
    from PIL import Image

    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class folders; pass an image-folder split.")
    images, labels, names = [], [], []
    for c, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).iterdir() if p.is_file())
        for f in files[:per_class]:
            with Image.open(f) as im:
                images.append(np.asarray(im.convert("RGB")))
            labels.append(c)
            names.append(f"{root.name}/{cls}/{f.name}")
    return np.stack(images), np.asarray(labels, np.int32), names


def cifar10_color_concepts(
    data_dir: str | os.PathLike | None = None,
    split: str = "test",
    per_class: int | None = None,
    table: np.ndarray | None = None,
) -> ArrayConcepts:
    """Colour concepts on real CIFAR-10 images (masks ``32 x 32``).

    Args:
      data_dir: the image-folder copy of CIFAR-10; :func:`default_cifar10_dir`
        if None.
      split: ``"train"`` or ``"test"``.
      per_class: the first this many images of each class (all if None).
      table: the colour table; :func:`load_color_table` if None.

    Returns:
      :func:`color_concepts` of the images, in class-then-file order, named
      ``cifar10/<split>/<class>/<file>`` and with ``split`` as their split.

    Note:
      The local copy stores JPEGs, so colours near a boundary between two names
      may be named differently than on the lossless original.
    """
    data_dir = Path(data_dir) if data_dir is not None else default_cifar10_dir()
    if not (data_dir / split).is_dir():
        raise ValueError(
            f"no {split!r} split under {data_dir}; pass data_dir= or set "
            "SYMJAX_DATA_DIR to the CIFAR-10 image folders."
        )
    images, _, names = read_image_folder(data_dir / split, per_class)
    names = [f"cifar10/{n}" for n in names]
    return color_concepts(images, table, names=names, splits=[split] * len(names))
