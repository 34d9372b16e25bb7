"""Procedurally generated concept data: textures, shapes, outlines, scenes.

A seeded, deterministic stand-in for Broden that needs no download. Each image is
drawn from a *scene* recipe, and every pixel's concepts are known exactly:

* ``texture`` (pixel): the pattern of the background regions (stripes in three
  orientations, checks, dots, noise, smooth gradients);
* ``shape`` (pixel): filled simple shapes (disk, square, triangle, cross), at
  random position, size and orientation, each in a flat colour;
* ``outline`` (pixel): the same shapes drawn as hollow contours only, labelled
  on their stroke pixels;
* ``scene`` (image-level): the recipe (empty, single, crowd, grid, horizon),
  whose mask is the whole image;
* ``color`` (pixel, optional): the colour term of every pixel of the final image
  (see :mod:`symjax.dissection.colors`).

Image ``i`` is drawn from ``numpy.random.default_rng([seed, i])`` alone, so any
image can be regenerated on its own and the set does not depend on its size.
Later objects occlude earlier ones, so each pixel category needs one layer.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.ndimage

from symjax.dissection.colors import COLOR_CATEGORY, color_concept_list, color_index
from symjax.dissection.concepts import ArrayConcepts, Concept

TEXTURES = (
    "striped-horizontal",
    "striped-vertical",
    "striped-diagonal",
    "checkered",
    "dotted",
    "noisy",
    "smooth",
)
SHAPES = ("disk", "square", "triangle", "cross")
OUTLINES = tuple(f"{s}-outline" for s in SHAPES)
SCENES = ("empty-s", "single-s", "crowd-s", "grid-s", "horizon-s")
CATEGORIES = ("texture", "shape", "outline", "scene")


def synthetic_concept_list(with_color: bool) -> tuple[Concept, ...]:
    """The generated set's concepts: colours (if any) first, then by category."""
    out = list(color_concept_list(1)) if with_color else []
    groups = (
        ("texture", TEXTURES),
        ("shape", SHAPES),
        ("outline", OUTLINES),
        ("scene", SCENES),
    )
    for category, names in groups:
        for name in names:
            out.append(Concept(len(out) + 1, name, category))
    return tuple(out)


def _contrasting(rng: np.random.Generator, other: np.ndarray) -> np.ndarray:
    """A random RGB colour at L1 distance >= 150 from ``other`` (best of 16 draws)."""
    best, dist = None, -1
    for _ in range(16):
        c = rng.integers(0, 256, 3)
        d = int(np.abs(c - other).sum())
        if d > dist:
            best, dist = c, d
        if d >= 150:
            break
    return best


def _texture(
    rng: np.random.Generator, kind: str, size: int, a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """A ``[size, size, 3]`` float image of texture ``kind`` in colours ``a``, ``b``."""
    iy, ix = np.mgrid[0:size, 0:size]
    if kind.startswith("striped"):
        half = int(rng.integers(2, 5))
        coord = {
            "striped-horizontal": iy,
            "striped-vertical": ix,
            "striped-diagonal": ix + iy if rng.random() < 0.5 else ix - iy + size,
        }[kind]
        t = ((coord + int(rng.integers(0, 2 * half))) // half) % 2
    elif kind == "checkered":
        s = int(rng.integers(2, 5))
        oy, ox = rng.integers(0, 2 * s, 2)
        t = ((iy + oy) // s + (ix + ox) // s) % 2
    elif kind == "dotted":
        p = int(rng.integers(5, 8))
        r = float(rng.uniform(1.0, 1.8))
        oy, ox = rng.uniform(0, p, 2)
        dy = (iy + 0.5 + oy) % p - p / 2
        dx = (ix + 0.5 + ox) % p - p / 2
        t = (dy**2 + dx**2 <= r**2).astype(float)
    elif kind == "noisy":
        t = rng.random((size, size))
    elif kind == "smooth":
        angle = rng.uniform(0, 2 * math.pi)
        ramp = (math.cos(angle) * ix + math.sin(angle) * iy) / size
        t = 0.3 * (ramp - ramp.min()) / max(np.ptp(ramp), 1e-9)
    else:
        raise ValueError(f"unknown texture {kind!r}.")
    t = np.asarray(t, float)[..., None]
    return (1.0 - t) * a[None, None, :] + t * b[None, None, :]


def _shape_mask(
    kind: str, size: int, cy: float, cx: float, r: float, angle: float
) -> np.ndarray:
    """``[size, size]`` bool: pixel centres inside shape ``kind``."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    c, s = math.cos(angle), math.sin(angle)
    u = c * (x - cx) + s * (y - cy)
    v = -s * (x - cx) + c * (y - cy)
    if kind == "disk":
        return u**2 + v**2 <= r**2
    if kind == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r
    if kind == "cross":
        arm = 0.33 * r
        return ((np.abs(u) <= arm) & (np.abs(v) <= r)) | (
            (np.abs(v) <= arm) & (np.abs(u) <= r)
        )
    if kind == "triangle":
        inside = np.ones((size, size), bool)
        for k in range(3):
            # Inward half-plane of the edge facing direction angle_k.
            phi = math.pi / 2 + 2 * math.pi * k / 3
            inside &= math.cos(phi) * u + math.sin(phi) * v <= 0.5 * r
        return inside
    raise ValueError(f"unknown shape {kind!r}.")


def _stroke(mask: np.ndarray, width: int) -> np.ndarray:
    """The pixels of ``mask`` within ``width`` of its boundary (not the image edge)."""
    inner = scipy.ndimage.binary_erosion(mask, iterations=width, border_value=1)
    return mask & ~inner


def _objects(rng: np.random.Generator, scene: str, size: int) -> list[dict]:
    """The objects a scene recipe places: kind, style, centre, radius, angle."""
    if scene == "empty-s":
        return []
    if scene == "single-s":
        specs = [(size * rng.uniform(0.4, 0.6), size * rng.uniform(0.4, 0.6),
                  size * rng.uniform(0.25, 0.4))]  # fmt: skip
    elif scene == "crowd-s":
        n = int(rng.integers(3, 6))
        specs = [
            (size * rng.uniform(0.15, 0.85), size * rng.uniform(0.15, 0.85),
             size * rng.uniform(0.1, 0.18))
            for _ in range(n)
        ]  # fmt: skip
    elif scene == "grid-s":
        g = int(rng.integers(2, 4))
        step = size / g
        specs = [
            ((i + 0.5) * step, (j + 0.5) * step, 0.38 * step)
            for i in range(g)
            for j in range(g)
        ]
    elif scene == "horizon-s":
        n = int(rng.integers(0, 2))
        specs = [
            (size * rng.uniform(0.7, 0.85), size * rng.uniform(0.2, 0.8),
             size * rng.uniform(0.1, 0.16))
            for _ in range(n)
        ]  # fmt: skip
    else:
        raise ValueError(f"unknown scene {scene!r}.")
    same = scene == "grid-s"
    kind0, outline0 = int(rng.integers(len(SHAPES))), bool(rng.random() < 0.5)
    angle0 = rng.uniform(0, 2 * math.pi)
    out = []
    for cy, cx, r in specs:
        out.append(
            {
                "kind": kind0 if same else int(rng.integers(len(SHAPES))),
                "outline": outline0 if same else bool(rng.random() < 0.5),
                "cy": cy,
                "cx": cx,
                "r": r,
                "angle": angle0 if same else rng.uniform(0, 2 * math.pi),
                "width": int(rng.integers(1, 3)),
            }
        )
    return out


def _render(
    seed: int, index: int, size: int, numbers: dict[str, int]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Image ``index``: ``[size, size, 3]`` uint8, labels ``[3, size, size]``, scene."""
    rng = np.random.default_rng([seed, index])
    scene = SCENES[int(rng.integers(len(SCENES)))]
    labels = np.zeros((3, size, size), np.int32)  # texture, shape, outline

    # Background textures: one for the whole image, or sky over ground.
    a = rng.integers(0, 256, 3)
    b = _contrasting(rng, a)
    if scene == "horizon-s":
        ground = TEXTURES[int(rng.integers(len(TEXTURES) - 1))]
        sky_a = rng.integers(0, 256, 3)
        sky = _texture(rng, "smooth", size, sky_a, _contrasting(rng, sky_a))
        image = _texture(rng, ground, size, a, b)
        line = int(rng.integers(size // 3, 2 * size // 3))
        image[:line] = sky[:line]
        labels[0] = numbers[ground]
        labels[0, :line] = numbers["smooth"]
    else:
        kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
        image = _texture(rng, kind, size, a, b)
        labels[0] = numbers[kind]

    # Objects, later ones in front: filled shapes or hollow outlines.
    for obj in _objects(rng, scene, size):
        shape = SHAPES[obj["kind"]]
        mask = _shape_mask(shape, size, obj["cy"], obj["cx"], obj["r"], obj["angle"])
        if obj["outline"]:
            mask = _stroke(mask, obj["width"])
        if not mask.any():
            continue
        image[mask] = _contrasting(rng, a)
        labels[:, mask] = 0
        if obj["outline"]:
            labels[2, mask] = numbers[f"{shape}-outline"]
        else:
            labels[1, mask] = numbers[shape]
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image, labels, numbers[scene]


def synthetic_concepts(
    num_images: int,
    seed: int = 0,
    *,
    size: int = 32,
    color_table: np.ndarray | None = None,
    split: str = "val",
) -> ArrayConcepts:
    """The generated concept set.

    Args:
      num_images: how many images (image ``i`` does not depend on this).
      seed: the set's seed.
      size: the side of the square images and masks (32 matches CIFAR-10).
      color_table: if given, adds the per-pixel ``color`` category (concepts
        1..11, as in :mod:`symjax.dissection.colors`); otherwise no colours.
      split: the split name given to every image.

    Returns:
      An :class:`ArrayConcepts` with pixel categories ``[color,] texture, shape,
      outline`` (one layer each) and the image-level category ``scene``.

    Note:
      Broden's textures are image-level labels (whole DTD images); here the
      textured regions are known per pixel, so ``texture`` is a pixel category.
      Images without objects carry no ``shape``/``outline`` labels; dissection
      then leaves them out of those categories' IoU, as Broden does for images
      unannotated in a category.
    """
    if not isinstance(num_images, int | np.integer) or num_images < 1:
        raise ValueError(f"num_images must be a positive integer, got {num_images!r}.")
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}.")
    concepts = synthetic_concept_list(color_table is not None)
    numbers = {c.name: c.number for c in concepts}
    images = np.zeros((num_images, size, size, 3), np.uint8)
    labels = np.zeros((num_images, 3, size, size), np.int32)
    scenes = np.zeros((num_images, 1), np.int32)
    for i in range(num_images):
        images[i], labels[i], scenes[i, 0] = _render(seed, i, size, numbers)

    categories = CATEGORIES
    layers = ("texture", "shape", "outline")
    if color_table is not None:
        colors = color_index(images, color_table).astype(np.int32)[:, None] + 1
        labels = np.concatenate([colors, labels], axis=1)
        categories = (COLOR_CATEGORY, *categories)
        layers = (COLOR_CATEGORY, *layers)
    return ArrayConcepts(
        images=images,
        pixel_labels=labels,
        image_labels=scenes,
        concepts=concepts,
        categories=categories,
        image_level_categories=("scene",),
        layer_categories=layers,
        slot_categories=("scene",),
        names=[f"synthetic/{seed}/{i:06d}.png" for i in range(num_images)],
        splits=[split] * num_images,
    )
