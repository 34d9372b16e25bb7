"""Tests for the concept data: the interface, colour concepts, the generated set."""

import numpy as np
import pytest
import scipy.ndimage

from symjax.dissection import (
    COLOR_NAMES,
    ArrayConcepts,
    Concept,
    cifar10_color_concepts,
    color_concepts,
    load_color_table,
    synthetic_concepts,
)
from symjax.dissection.colors import color_index


@pytest.fixture(scope="module")
def table():
    return load_color_table()


def test_color_names_follow_broden():
    assert COLOR_NAMES == (
        "black-c", "blue-c", "brown-c", "grey-c", "green-c", "orange-c",
        "pink-c", "purple-c", "red-c", "white-c", "yellow-c",
    )  # fmt: skip


def test_color_table_names_plain_colours(table):
    plain = {
        (0, 0, 0): "black-c",
        (255, 255, 255): "white-c",
        (230, 20, 20): "red-c",
        (40, 80, 200): "blue-c",
        (30, 200, 30): "green-c",
        (250, 240, 40): "yellow-c",
        (128, 128, 128): "grey-c",
    }
    rgb = np.array(list(plain), np.uint8)
    got = [COLOR_NAMES[k] for k in color_index(rgb, table)]
    assert got == list(plain.values())


def test_cifar10_color_concepts(cifar_dir, table):
    ds = cifar10_color_concepts(cifar_dir, "test", per_class=2, table=table)
    assert len(ds) == 20 and ds.image_shape == (32, 32) and ds.mask_shape == (32, 32)
    assert [c.name for c in ds.concepts] == list(COLOR_NAMES)
    assert ds.categories == ("color",) and ds.image_level_categories == frozenset()
    assert ds.record(0).name == "cifar10/test/airplane/0000.jpg"
    # Every pixel carries exactly the colour the table names (an independent
    # per-pixel loop over a few images).
    for i in (0, 7, 19):
        img = ds.images[i].astype(int)
        for y, x in ((0, 0), (5, 17), (31, 31), (16, 3)):
            r, g, b = img[y, x]
            assert ds.pixel_labels[i, 0, y, x] == table[r // 8, g // 8, b // 8] + 1
    # Real images have several colours.
    assert len(np.unique(ds.pixel_labels)) >= 5


def test_array_concepts_batches_are_padded(table):
    images = np.random.default_rng(0).integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
    ds = color_concepts(images, table)
    batches = list(ds.batches(3))
    assert [b.num_valid for b in batches] == [3, 3, 1]
    last = batches[-1]
    assert last.images.shape == (3, 4, 4, 3) and last.pixel_labels.shape == (3, 1, 4, 4)
    assert not last.images[1:].any() and not last.pixel_labels[1:].any()
    np.testing.assert_array_equal(last.images[0], images[6])
    # The generic record-based batching agrees with the array slicing.
    generic = list(super(ArrayConcepts, ds).batches(3))
    for a, b in zip(batches, generic, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


def test_array_concepts_validates():
    img = np.zeros((2, 4, 4, 3), np.uint8)
    lab = np.zeros((2, 1, 4, 4), np.int32)
    args = ([Concept(1, "a", "x")], ["x"], [], ["x"], [])
    ArrayConcepts(img, lab, np.zeros((2, 0), np.int32), *args)
    with pytest.raises(ValueError, match="no concept"):
        ArrayConcepts(img, lab + 2, np.zeros((2, 0), np.int32), *args)
    with pytest.raises(ValueError, match="uint8"):
        ArrayConcepts(img.astype(float), lab, np.zeros((2, 0), np.int32), *args)
    with pytest.raises(ValueError, match="categories"):
        ArrayConcepts(
            img, lab, np.zeros((2, 0), np.int32), [Concept(1, "a", "y")], ["x"],
            [], ["x"], [],
        )  # fmt: skip
    with pytest.raises(ValueError, match="distinct"):
        ArrayConcepts(
            img, lab, np.zeros((2, 0), np.int32),
            [Concept(1, "a", "x"), Concept(1, "b", "x")], ["x"], [], ["x"], [],
        )  # fmt: skip


def test_generated_set_is_deterministic_and_prefix_stable():
    a = synthetic_concepts(30, seed=2)
    b = synthetic_concepts(12, seed=2)
    c = synthetic_concepts(12, seed=3)
    np.testing.assert_array_equal(a.images[:12], b.images)
    np.testing.assert_array_equal(a.pixel_labels[:12], b.pixel_labels)
    np.testing.assert_array_equal(a.image_labels[:12], b.image_labels)
    assert not np.array_equal(b.images, c.images)


def test_generated_set_labels_are_consistent(table):
    ds = synthetic_concepts(150, seed=0, color_table=table, size=32)
    assert ds.categories == ("color", "texture", "shape", "outline", "scene")
    assert ds.layer_categories == ("color", "texture", "shape", "outline")
    assert ds.image_level_categories == {"scene"}
    number = {c.name: c.number for c in ds.concepts}
    category = {c.number: c.category for c in ds.concepts}
    color, texture, shape, outline = np.moveaxis(ds.pixel_labels, 1, 0)

    # Each label sits in its own category's layer; every concept occurs.
    for layer, cat in ((color, "color"), (texture, "texture"), (shape, "shape")):
        assert {category[k] for k in np.unique(layer) if k} == {cat}
    assert {category[k] for k in np.unique(outline) if k} == {"outline"}
    seen = set(np.unique(ds.pixel_labels)) | set(np.unique(ds.image_labels))
    assert seen - {0} == set(number.values())

    # Every pixel is exactly one of background texture, shape, outline.
    covered = (texture > 0).astype(int) + (shape > 0) + (outline > 0)
    np.testing.assert_array_equal(covered, 1)
    # Colour labels are the table's names of the final pixels.
    np.testing.assert_array_equal(color, color_index(ds.images, table) + 1)
    # One scene per image; empty scenes have no objects.
    assert np.all(ds.image_labels[:, 0] > 0)
    empty = ds.image_labels[:, 0] == number["empty-s"]
    assert empty.any() and not shape[empty].any() and not outline[empty].any()
    # An outline is a thin stroke: most of it touches the background.
    stroke = outline > 0
    inner = scipy.ndimage.binary_erosion(stroke, structure=np.ones((1, 3, 3)))
    assert inner.sum() < 0.2 * stroke.sum()
    # Filled shapes are solid: their interiors are large.
    solid = shape > 0
    inner = scipy.ndimage.binary_erosion(solid, structure=np.ones((1, 3, 3)))
    assert inner.sum() > 0.3 * solid.sum()
