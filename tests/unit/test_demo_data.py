"""Unit tests for core.demo_data: the synthetic shapes data set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data import load_images, scan_dataset
from core.demo_data import SHAPES, DemoDataSummary, draw_shape_image, make_demo_data


def file_bytes(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_layout_and_counts(tmp_path: Path) -> None:
    out = tmp_path / "demo"

    summary = make_demo_data(out, classes=3, per_class=6, size=32)

    assert isinstance(summary, DemoDataSummary)
    assert summary.root == out.absolute()
    assert summary.class_names == tuple(sorted(SHAPES[:3]))
    assert summary.counts == {"train": 18, "validation": 9, "test": 6}
    for split, per_class in {"train": 6, "validation": 3, "test": 2}.items():
        assert sorted(p.name for p in (out / split).iterdir()) == sorted(SHAPES[:3])
        for shape in SHAPES[:3]:
            files = sorted((out / split / shape).iterdir())
            assert len(files) == per_class
            suffixes = {f.suffix for f in files}
            assert suffixes == {".png", ".jpg"}
            with Image.open(files[0]) as image:
                assert image.size == (32, 32) and image.mode == "RGB"


def test_minimum_split_sizes(tmp_path: Path) -> None:
    summary = make_demo_data(tmp_path / "demo", per_class=2, size=32)

    assert summary.counts == {"train": 4, "validation": 4, "test": 4}


def test_scan_dataset_accepts_output(tmp_path: Path) -> None:
    summary = make_demo_data(tmp_path / "demo", classes=4, per_class=4, size=32)

    index = scan_dataset(summary.root)

    assert index.layout == "keras"
    assert index.class_names == summary.class_names
    assert {split: len(index.splits[split]) for split in index.split_names()} == summary.counts
    loaded = load_images(index.splits["train"], 32)
    assert loaded.skipped == []
    assert loaded.images.shape == (16, 32, 32, 3)


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    first = make_demo_data(tmp_path / "a", per_class=4, size=32, seed=7)
    second = make_demo_data(tmp_path / "b", per_class=4, size=32, seed=7)
    other = make_demo_data(tmp_path / "c", per_class=4, size=32, seed=8)

    assert file_bytes(first.root) == file_bytes(second.root)
    assert scan_dataset(first.root).fingerprint == scan_dataset(second.root).fingerprint
    other_bytes = file_bytes(other.root)
    assert other_bytes.keys() == file_bytes(first.root).keys()
    assert other_bytes != file_bytes(first.root)
    assert scan_dataset(first.root).fingerprint != scan_dataset(other.root).fingerprint


def test_images_within_a_class_differ(tmp_path: Path) -> None:
    summary = make_demo_data(tmp_path / "demo", per_class=4, size=32)
    files = sorted((summary.root / "train" / "circle").glob("*.png"))

    arrays = [np.asarray(Image.open(path)) for path in files]

    assert len(arrays) == 2
    assert not np.array_equal(arrays[0], arrays[1])


def foreground_mask(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image, dtype=float)
    corner = pixels[:4, :4].reshape(-1, 3).mean(axis=0)
    return np.linalg.norm(pixels - corner, axis=-1) > 100


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_contrasts_with_its_background(shape: str) -> None:
    foreground = foreground_mask(draw_shape_image(shape, 64, np.random.default_rng(1)))

    assert 0.02 < foreground.mean() < 0.6, f"{shape} should cover part of the image"


@pytest.mark.parametrize("seed", range(5))
def test_shapes_are_distinct_drawings(seed: int) -> None:
    # Same generator state -> same position, size, rotation and colours: only the
    # shape differs, so the overlap of two masks measures how alike the shapes are.
    masks = [
        foreground_mask(draw_shape_image(shape, 64, np.random.default_rng(seed)))
        for shape in SHAPES
    ]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            overlap = (masks[i] & masks[j]).sum() / (masks[i] | masks[j]).sum()
            assert overlap < 0.9, (SHAPES[i], SHAPES[j], overlap)


def centroid(mask: np.ndarray) -> np.ndarray:
    rows, columns = np.nonzero(mask)
    return np.array([rows.mean(), columns.mean()])


@pytest.mark.parametrize("shape", ["square", "triangle", "star"])
def test_variation_zero_draws_one_centred_upright_pose(shape: str) -> None:
    masks = [
        foreground_mask(draw_shape_image(shape, 64, np.random.default_rng(seed), variation=0.0))
        for seed in range(4)
    ]
    for mask in masks:
        # The polygons are not symmetric about their centre, so allow a little.
        assert np.abs(centroid(mask) - 31.5).max() < 4, centroid(mask)
        overlap = (mask & masks[0]).sum() / (mask | masks[0]).sum()
        assert overlap > 0.95, overlap
    # The full range moves and turns the same draws.
    full = [
        foreground_mask(draw_shape_image(shape, 64, np.random.default_rng(s))) for s in range(4)
    ]
    assert min((m & full[0]).sum() / (m | full[0]).sum() for m in full[1:]) < 0.7


def test_full_variation_is_the_default_drawing(tmp_path: Path) -> None:
    default = make_demo_data(tmp_path / "a", per_class=2, size=32, seed=3)
    full = make_demo_data(tmp_path / "b", per_class=2, size=32, seed=3, variation=1.0)
    narrow = make_demo_data(tmp_path / "c", per_class=2, size=32, seed=3, variation=0.5)

    assert file_bytes(default.root) == file_bytes(full.root)
    assert file_bytes(narrow.root) != file_bytes(default.root)


def test_refuses_non_empty_output(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")

    with pytest.raises(FileExistsError) as info:
        make_demo_data(out, per_class=2, size=32)

    assert str(out) in str(info.value)
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_empty_existing_output_is_fine(tmp_path: Path) -> None:
    summary = make_demo_data(tmp_path, per_class=2, size=32)
    assert summary.root == tmp_path.absolute()


def test_refuses_file_as_output(tmp_path: Path) -> None:
    out = tmp_path / "file"
    out.write_text("x")
    with pytest.raises(FileExistsError) as info:
        make_demo_data(out, per_class=2, size=32, overwrite=True)
    assert str(out) in str(info.value)


def test_overwrite_replaces_only_its_own_folders(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    make_demo_data(out, classes=3, per_class=4, size=32)
    (out / "mine.txt").write_text("keep me")
    (out / "notes").mkdir()
    (out / "notes" / "n.md").write_text("also mine")
    stale = out / "train" / "circle" / "stale.png"
    stale.write_bytes(b"old")

    summary = make_demo_data(out, classes=2, per_class=2, size=32, overwrite=True)

    assert (out / "mine.txt").read_text() == "keep me"
    assert (out / "notes" / "n.md").read_text() == "also mine"
    assert not stale.exists()
    assert not (out / "train" / SHAPES[2]).exists()
    assert scan_dataset(out).class_names == summary.class_names


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("classes", 1),
        ("classes", len(SHAPES) + 1),
        ("classes", True),
        ("per_class", 1),
        ("per_class", 2.0),
        ("size", 31),
        ("seed", -1),
        ("variation", -0.1),
        ("variation", 1.5),
        ("variation", True),
    ],
)
def test_bad_arguments(tmp_path: Path, argument: str, value: object) -> None:
    out = tmp_path / "demo"
    with pytest.raises(ValueError, match=argument) as info:
        make_demo_data(out, **{argument: value})  # type: ignore[arg-type]
    assert repr(value) in str(info.value)
    assert not out.exists()


def test_unknown_shape() -> None:
    with pytest.raises(ValueError, match="hexagon"):
        draw_shape_image("hexagon", 32, np.random.default_rng(0))


def test_has_at_least_six_shapes() -> None:
    assert len(SHAPES) >= 6
    assert len(set(SHAPES)) == len(SHAPES)
    assert {"circle", "square", "triangle", "cross", "ring", "diamond"} <= set(SHAPES)


def test_shapes_choose_the_classes_drawn(tmp_path: Path) -> None:
    summary = make_demo_data(tmp_path / "demo", shapes=("star", "ring"), per_class=2, size=32)

    assert summary.class_names == ("ring", "star")
    assert sorted(path.name for path in (summary.root / "train").iterdir()) == ["ring", "star"]
    assert summary.counts["train"] == 4
    same = make_demo_data(
        tmp_path / "same", classes=2, shapes=["star", "ring"], per_class=2, size=32
    )
    assert (same.root / "train/star/star.0000.png").read_bytes() == (
        summary.root / "train/star/star.0000.png"
    ).read_bytes()


@pytest.mark.parametrize(
    ("shapes", "classes", "message"),
    [
        (("ring", "hexagon"), None, "hexagon"),
        (("ring", "ring"), None, "distinct"),
        (("ring",), None, "at least 2"),
        (("ring", "star"), 3, "classes=3"),
    ],
)
def test_bad_shapes(
    tmp_path: Path, shapes: tuple[str, ...], classes: int | None, message: str
) -> None:
    out = tmp_path / "demo"
    with pytest.raises(ValueError, match=message):
        make_demo_data(out, shapes=shapes, classes=classes, per_class=2, size=32)
    assert not out.exists()
