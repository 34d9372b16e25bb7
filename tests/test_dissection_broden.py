"""Tests for symjax.dissection.broden: the Broden format, through round trips."""

import csv

import numpy as np
import pytest
from PIL import Image

from symjax.dissection import (
    ArrayConcepts,
    Concept,
    dissect,
    load_color_table,
    read_broden,
    synthetic_concepts,
    write_broden,
)
from symjax.dissection.broden import decode_labels, encode_labels


def _all_batches(ds, batch_size=4):
    """images, pixel_labels, image_labels of the whole dataset, padding removed."""
    batches = list(ds.batches(batch_size))
    fields = ("images", "pixel_labels", "image_labels")
    return [np.concatenate([getattr(b, f) for b in batches])[: len(ds)] for f in fields]


def _assert_round_trip(ds, back):
    assert back.concepts == ds.concepts
    assert back.categories == ds.categories
    assert back.image_level_categories == ds.image_level_categories
    assert back.layer_categories == ds.layer_categories
    assert back.slot_categories == ds.slot_categories
    assert back.image_shape == ds.image_shape and back.mask_shape == ds.mask_shape
    assert len(back) == len(ds)
    for a, b in zip(_all_batches(ds), _all_batches(back), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    for i in (0, len(ds) - 1):
        assert back.record(i).split == ds.record(i).split


def test_label_png_encoding():
    labels = np.array([[0, 1, 255], [256, 1000, 65535]])
    rgb = encode_labels(labels)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    np.testing.assert_array_equal(rgb[1, 1], [1000 % 256, 1000 // 256, 0])
    np.testing.assert_array_equal(decode_labels(rgb), labels)
    with pytest.raises(ValueError, match="65535"):
        encode_labels(np.array([65536]))


def test_generated_set_round_trip(tmp_path):
    ds = synthetic_concepts(10, seed=1, color_table=load_color_table())
    write_broden(ds, tmp_path / "gen")
    back = read_broden(tmp_path / "gen")
    _assert_round_trip(ds, back)
    assert back.image_level_categories == {"scene"}

    # The files are the documented format.
    with open(tmp_path / "gen/index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:6] == ["image", "split", "ih", "iw", "sh", "sw"]
    assert rows[0]["scene"].isdigit()
    png = rows[0]["color"].split(";")[0]
    rgb = np.asarray(Image.open(tmp_path / "gen/images" / png))
    np.testing.assert_array_equal(
        rgb[..., 0] + 256 * rgb[..., 1].astype(int), ds.pixel_labels[0, 0]
    )
    with open(tmp_path / "gen/label.csv", newline="") as f:
        labels = {int(r["number"]): r for r in csv.DictReader(f)}
    assert labels[9]["name"] == "red-c" and labels[9]["category"].startswith("color(")
    assert (tmp_path / "gen/c_outline.csv").is_file()

    # Dissection reads the same numbers from both.
    f = np.random.default_rng(0).normal(size=(10, 8, 8, 3))
    a = dissect(f, ds, quantile=0.05, batch_size=4)
    b = dissect(f, back, quantile=0.05, batch_size=4)
    np.testing.assert_array_equal(a.intersection, b.intersection)
    np.testing.assert_array_equal(a.activation, b.activation)
    np.testing.assert_array_equal(a.label_count, b.label_count)


def test_large_numbers_layers_and_image_labels_round_trip(tmp_path):
    # Label numbers above 255 (they need the green channel), two layers of one
    # pixel category, two image-level labels, unused numbers, and an image with
    # no label in a category.
    rng = np.random.default_rng(0)
    n, s = 5, 6
    concepts = [
        Concept(3, "wall", "object"),
        Concept(300, "door", "object"),
        Concept(1000, "handle", "part"),
        Concept(1001, "hinge", "part"),
        Concept(70, "kitchen-s", "scene"),
        Concept(71, "attic-s", "scene"),
        Concept(256, "never-seen", "part"),
    ]
    pixel = np.zeros((n, 3, s, s), np.int32)
    pixel[:, 0] = rng.choice([0, 3, 300], size=(n, s, s))
    pixel[:, 1] = rng.choice([0, 1000, 1001], size=(n, s, s))
    pixel[:, 2] = np.where(rng.random((n, s, s)) < 0.2, 1001, 0)
    pixel[2, 1:] = 0  # image 2 has no parts
    scenes = np.array([[70, 71], [71, 0], [0, 0], [70, 0], [71, 70]], np.int32)
    ds = ArrayConcepts(
        rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8),
        pixel,
        scenes,
        concepts,
        ["object", "part", "scene"],
        ["scene"],
        ["object", "part", "part"],
        ["scene", "scene"],
        names=[f"site/{i}.jpg" for i in range(n)],
        splits=["train", "val", "train", "val", "train"],
    )
    write_broden(ds, tmp_path / "b")
    back = read_broden(tmp_path / "b")
    _assert_round_trip(ds, back)
    assert back.record(2).pixel_labels.get("part") is None
    assert back.record(0).image_labels["scene"] == (70, 71)
    np.testing.assert_array_equal(_all_batches(back)[1], pixel)

    # Reading one split or some categories.
    train = read_broden(tmp_path / "b", split="train")
    assert len(train) == 3
    np.testing.assert_array_equal(_all_batches(train, 3)[0], ds.images[[0, 2, 4]])
    parts = read_broden(tmp_path / "b", categories=["part"])
    assert parts.layer_categories == ("part", "part") and parts.slot_categories == ()
    assert {c.name for c in parts.concepts} == {"handle", "hinge", "never-seen"}


def test_reader_and_writer_errors(tmp_path):
    with pytest.raises(ValueError, match="index.csv"):
        read_broden(tmp_path)
    ds = synthetic_concepts(2, seed=0)
    write_broden(ds, tmp_path / "x")
    with pytest.raises(ValueError, match="already"):
        write_broden(ds, tmp_path / "x")
    with pytest.raises(ValueError, match="categories"):
        read_broden(tmp_path / "x", categories=["material"])
