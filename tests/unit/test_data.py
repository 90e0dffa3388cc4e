"""Unit tests for core.data: dataset discovery, fingerprint and image loading."""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data import (
    IMAGE_EXTENSIONS,
    SPLITS,
    DataError,
    DatasetIndex,
    ImageRecord,
    load_image,
    load_images,
    scan_dataset,
)


def write_image(path: Path, colour: tuple[int, int, int] = (200, 30, 30), size: int = 8) -> Path:
    """Write a small solid-colour image; the format follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def make_class_dirs(base: Path, counts: Mapping[str, int], offset: int = 0) -> None:
    """Write ``counts[name]`` distinct images into ``base/<name>/``."""
    for class_index, (name, count) in enumerate(counts.items()):
        for i in range(count):
            extension = "png" if i % 2 == 0 else "jpg"
            colour = (10 * class_index, 7 * i + offset, 100)
            write_image(base / name / f"{name}.{i}.{extension}", colour)


def make_keras(
    root: Path,
    train: Mapping[str, int] | None = None,
    validation: Mapping[str, int] | None = None,
    test: Mapping[str, int] | None = None,
) -> Path:
    make_class_dirs(root / "train", train or {"cats": 3, "dogs": 4})
    make_class_dirs(root / "validation", validation or {"cats": 2, "dogs": 1}, offset=1)
    if test is not None:
        make_class_dirs(root / "test", test, offset=2)
    return root


# --- layout discovery -------------------------------------------------------------------


def test_keras_layout_classes_counts_and_labels(tmp_path: Path) -> None:
    index = scan_dataset(make_keras(tmp_path))

    assert index.layout == "keras"
    assert index.root == tmp_path.absolute()
    assert index.class_names == ("cats", "dogs")
    assert index.num_classes == 2
    assert index.split_names() == ("train", "validation")
    assert "test" not in index.splits
    assert len(index.splits["train"]) == 7
    assert len(index.splits["validation"]) == 3
    for split, records in index.splits.items():
        assert [r.relative for r in records] == sorted(r.relative for r in records)
        for record in records:
            assert record.path.is_absolute() and record.path.is_file()
            assert record.relative.startswith(f"{split}/")
            assert record.relative.split("/")[1] == index.class_names[record.label]
            assert record.path == tmp_path.absolute() / record.relative
    train_labels = [r.label for r in index.splits["train"]]
    assert train_labels.count(0) == 3 and train_labels.count(1) == 4


def test_keras_layout_optional_test_split(tmp_path: Path) -> None:
    index = scan_dataset(make_keras(tmp_path, test={"cats": 2, "dogs": 2}))

    assert index.split_names() == SPLITS
    assert len(index.splits["test"]) == 4
    assert all(r.relative.startswith("test/") for r in index.splits["test"])


def test_keras_layout_walks_nested_folders(tmp_path: Path) -> None:
    make_keras(tmp_path)
    write_image(tmp_path / "train" / "cats" / "more" / "deep.png")

    index = scan_dataset(tmp_path)

    assert "train/cats/more/deep.png" in [r.relative for r in index.splits["train"]]


def test_index_pickles(tmp_path: Path) -> None:
    index = scan_dataset(make_keras(tmp_path))

    copy = pickle.loads(pickle.dumps(index))

    assert copy == index
    assert hash(copy) == hash(index)


def make_folder(root: Path, counts: Mapping[str, int]) -> Path:
    make_class_dirs(root, counts)
    return root


def relatives(index: DatasetIndex, split: str) -> set[str]:
    return {r.relative for r in index.splits[split]}


def test_folder_layout_seeded_split(tmp_path: Path) -> None:
    make_folder(tmp_path, {"ants": 20, "bees": 11, "wasps": 2})

    index = scan_dataset(tmp_path, validation_fraction=0.25, seed=3)
    again = scan_dataset(tmp_path, validation_fraction=0.25, seed=3)
    other = scan_dataset(tmp_path, validation_fraction=0.25, seed=4)

    assert index.layout == "folder"
    assert index.class_names == ("ants", "bees", "wasps")
    assert index.split_names() == ("train", "validation")
    train, validation = relatives(index, "train"), relatives(index, "validation")
    assert not train & validation
    assert len(train | validation) == 33
    assert train == relatives(again, "train") and validation == relatives(again, "validation")
    assert validation != relatives(other, "validation")
    assert index.fingerprint == again.fingerprint
    assert index.fingerprint != other.fingerprint

    by_class = {
        split: [sum(r.label == label for r in index.splits[split]) for label in range(3)]
        for split in ("train", "validation")
    }
    # round(0.25 * n), at least one per split: 20 -> 5, 11 -> 3, 2 -> 1.
    assert by_class["validation"] == [5, 3, 1]
    assert by_class["train"] == [15, 8, 1]
    for record in index.splits["train"] + index.splits["validation"]:
        assert record.relative.split("/")[0] == index.class_names[record.label]


def test_folder_layout_small_fraction_keeps_one_validation_image(tmp_path: Path) -> None:
    make_folder(tmp_path, {"a": 3, "b": 3})

    index = scan_dataset(tmp_path, validation_fraction=0.01)

    assert len(index.splits["validation"]) == 2
    assert len(index.splits["train"]) == 4


def test_folder_layout_large_fraction_keeps_one_train_image(tmp_path: Path) -> None:
    make_folder(tmp_path, {"a": 3, "b": 3})

    index = scan_dataset(tmp_path, validation_fraction=0.99)

    assert sorted(r.label for r in index.splits["train"]) == [0, 1]


def test_non_image_and_hidden_files_are_ignored(tmp_path: Path) -> None:
    make_keras(tmp_path)
    cats = tmp_path / "train" / "cats"
    (cats / "notes.txt").write_text("not an image")
    (cats / "Thumbs.db").write_bytes(b"\x00\x01")
    (cats / ".DS_Store").write_bytes(b"\x00")
    write_image(cats / ".hidden.png")
    write_image(cats / ".cache" / "inside_hidden_dir.png")
    write_image(cats / "UPPER.JPG")
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "README.md").write_text("about")

    index = scan_dataset(tmp_path)

    train = relatives(index, "train")
    assert "train/cats/UPPER.JPG" in train
    assert len(train) == 8
    assert index.class_names == ("cats", "dogs")


def test_image_extensions_are_lower_case_and_cover_common_formats() -> None:
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"} <= IMAGE_EXTENSIONS
    assert all(ext == ext.lower() and ext.startswith(".") for ext in IMAGE_EXTENSIONS)


# --- errors ------------------------------------------------------------------------------


def test_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="does not exist") as info:
        scan_dataset(missing)
    assert str(missing) in str(info.value)


def test_root_is_a_file(tmp_path: Path) -> None:
    file = write_image(tmp_path / "image.png")
    with pytest.raises(DataError, match="not a directory") as info:
        scan_dataset(file)
    assert str(file) in str(info.value)


def test_keras_layout_without_validation(tmp_path: Path) -> None:
    make_class_dirs(tmp_path / "train", {"cats": 2, "dogs": 2})
    with pytest.raises(DataError) as info:
        scan_dataset(tmp_path)
    assert str(tmp_path / "validation") in str(info.value)


def test_validation_without_train(tmp_path: Path) -> None:
    make_class_dirs(tmp_path / "validation", {"cats": 2, "dogs": 2})
    with pytest.raises(DataError) as info:
        scan_dataset(tmp_path)
    assert str(tmp_path / "train") in str(info.value)


def test_one_class_only(tmp_path: Path) -> None:
    make_folder(tmp_path, {"cats": 4})
    with pytest.raises(DataError, match="found 1 class folder") as info:
        scan_dataset(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_one_class_only_in_keras_train(tmp_path: Path) -> None:
    make_keras(tmp_path, train={"cats": 2})
    with pytest.raises(DataError, match="found 1 class folder") as info:
        scan_dataset(tmp_path)
    assert str(tmp_path / "train") in str(info.value)


def test_empty_class_folder(tmp_path: Path) -> None:
    make_keras(tmp_path)
    empty = tmp_path / "validation" / "dogs"
    for file in empty.iterdir():
        file.unlink()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no image files") as info:
        scan_dataset(tmp_path)
    assert str(empty) in str(info.value)


def test_class_names_differ_between_splits(tmp_path: Path) -> None:
    make_keras(tmp_path, validation={"cats": 2, "horses": 2})
    with pytest.raises(DataError, match="differ") as info:
        scan_dataset(tmp_path)
    message = str(info.value)
    assert "train" in message and "validation" in message
    assert "dogs" in message and "horses" in message
    assert str(tmp_path / "validation") in message


def test_class_names_differ_in_test_split(tmp_path: Path) -> None:
    make_keras(tmp_path, test={"cats": 2, "birds": 2})
    with pytest.raises(DataError, match="differ") as info:
        scan_dataset(tmp_path)
    assert "birds" in str(info.value) and str(tmp_path / "test") in str(info.value)


def test_folder_class_with_one_image(tmp_path: Path) -> None:
    make_folder(tmp_path, {"cats": 3, "dogs": 1})
    with pytest.raises(DataError, match="at least 2") as info:
        scan_dataset(tmp_path)
    assert str(tmp_path / "dogs") in str(info.value)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_validation_fraction(tmp_path: Path, fraction: float) -> None:
    make_folder(tmp_path, {"a": 3, "b": 3})
    with pytest.raises(DataError, match="validation_fraction") as info:
        scan_dataset(tmp_path, validation_fraction=fraction)
    assert repr(fraction) in str(info.value)


# --- fingerprint -------------------------------------------------------------------------


def test_fingerprint_is_stable(tmp_path: Path) -> None:
    make_keras(tmp_path)
    first = scan_dataset(tmp_path).fingerprint
    assert len(first) == 64 and int(first, 16) >= 0
    assert scan_dataset(tmp_path).fingerprint == first


def test_fingerprint_ignores_non_images_and_mtime(tmp_path: Path) -> None:
    make_keras(tmp_path)
    first = scan_dataset(tmp_path).fingerprint
    (tmp_path / "train" / "cats" / "notes.txt").write_text("x")
    image = next((tmp_path / "train" / "cats").glob("*.png"))
    image.write_bytes(image.read_bytes())

    assert scan_dataset(tmp_path).fingerprint == first


def test_fingerprint_changes_with_bytes(tmp_path: Path) -> None:
    make_keras(tmp_path)
    first = scan_dataset(tmp_path).fingerprint
    image = next((tmp_path / "validation" / "dogs").glob("*"))
    data = bytearray(image.read_bytes())
    data[-1] ^= 0xFF
    image.write_bytes(bytes(data))

    assert scan_dataset(tmp_path).fingerprint != first


def test_fingerprint_changes_with_rename(tmp_path: Path) -> None:
    make_keras(tmp_path)
    first = scan_dataset(tmp_path).fingerprint
    image = tmp_path / "train" / "cats" / "cats.0.png"
    image.rename(image.with_name("renamed.png"))

    assert scan_dataset(tmp_path).fingerprint != first


def test_fingerprint_changes_when_file_moves_class(tmp_path: Path) -> None:
    make_keras(tmp_path)
    first = scan_dataset(tmp_path).fingerprint
    source = tmp_path / "train" / "cats" / "cats.0.png"
    source.rename(tmp_path / "train" / "dogs" / "cats.0.png")

    assert scan_dataset(tmp_path).fingerprint != first


def test_fingerprint_changes_with_added_and_removed_file(tmp_path: Path) -> None:
    make_keras(tmp_path)
    first = scan_dataset(tmp_path).fingerprint
    added = write_image(tmp_path / "train" / "dogs" / "new.png", (1, 2, 3))
    second = scan_dataset(tmp_path).fingerprint
    added.unlink()

    assert second != first
    assert scan_dataset(tmp_path).fingerprint == first


# --- loading -----------------------------------------------------------------------------


def test_load_images_shapes_labels_and_order(tmp_path: Path) -> None:
    index = scan_dataset(make_keras(tmp_path))
    records = index.splits["train"]

    loaded = load_images(records, 16)

    assert loaded.images.shape == (7, 16, 16, 3)
    assert loaded.images.dtype == np.uint8
    assert loaded.labels.dtype == np.int32
    assert loaded.labels.tolist() == [r.label for r in records]
    assert loaded.paths == [r.relative for r in records]
    assert loaded.skipped == []


def test_load_images_resizes_and_keeps_colour(tmp_path: Path) -> None:
    path = write_image(tmp_path / "big.png", (10, 120, 250), size=40)
    loaded = load_images([ImageRecord(path=path, label=1, relative="big.png")], 8)

    assert loaded.images.shape == (1, 8, 8, 3)
    assert (loaded.images[0] == (10, 120, 250)).all()


def test_load_images_empty_records() -> None:
    loaded = load_images([], 8)
    assert loaded.images.shape == (0, 8, 8, 3)
    assert loaded.labels.shape == (0,)


def test_load_images_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    index = scan_dataset(make_keras(tmp_path))

    loaded = load_images(index.splits["validation"], 8, progress=True)

    assert len(loaded.paths) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "3/3" in captured.err


def test_unreadable_images_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_keras(tmp_path)
    cats = tmp_path / "train" / "cats"
    (cats / "garbage.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    good_png = write_image(tmp_path / "scratch.png", size=32).read_bytes()
    (cats / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    index = scan_dataset(tmp_path)
    records = index.splits["train"]
    assert len(records) == 9

    with caplog.at_level(logging.WARNING, logger="core.data"):
        loaded = load_images(records, 8)

    assert len(loaded.skipped) == 2
    assert {path for path, _ in loaded.skipped} == {
        "train/cats/garbage.jpg",
        "train/cats/truncated.png",
    }
    assert all(reason for _, reason in loaded.skipped)
    assert loaded.images.shape == (7, 8, 8, 3)
    assert len(loaded.labels) == len(loaded.paths) == 7
    assert "train/cats/garbage.jpg" not in loaded.paths
    messages = [record.getMessage() for record in caplog.records]
    assert any("garbage.jpg" in message for message in messages)
    assert any("truncated.png" in message for message in messages)
    assert any("Skipped 2 of 9" in message for message in messages)


def test_all_unreadable_raises(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    records = [ImageRecord(path=bad, label=0, relative="bad.png")]
    with pytest.raises(DataError, match="none of the 1 images") as info:
        load_images(records, 8)
    assert str(bad) in str(info.value)


def test_load_image_error_names_path(tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError) as info:
        load_image(bad, 8)
    assert str(bad) in str(info.value)
    with pytest.raises(DataError) as missing:
        load_image(tmp_path / "missing.png", 8)
    assert "missing.png" in str(missing.value)


@pytest.mark.parametrize("image_size", [0, -3, 2.5, True])
def test_bad_image_size(tmp_path: Path, image_size: int) -> None:
    path = write_image(tmp_path / "ok.png")
    with pytest.raises(ValueError, match="image_size"):
        load_image(path, image_size)


def save_mode_image(tmp_path: Path, name: str, image: Image.Image) -> Path:
    path = tmp_path / name
    image.save(path)
    return path


def test_rgba_is_composited_onto_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (10, 10), (255, 0, 0, 255))
    image.paste((0, 0, 255, 0), (0, 0, 5, 10))
    path = save_mode_image(tmp_path, "rgba.png", image)

    pixels = load_image(path, 10)

    assert pixels.dtype == np.uint8 and pixels.shape == (10, 10, 3)
    assert (pixels[:, :5] == 255).all(), "transparent pixels must become white"
    assert (pixels[:, 6:] == (255, 0, 0)).all(), "opaque red must stay red"


def test_la_is_composited_onto_white(tmp_path: Path) -> None:
    image = Image.new("LA", (8, 8), (40, 255))
    image.paste((0, 0), (0, 0, 4, 8))
    path = save_mode_image(tmp_path, "la.png", image)

    pixels = load_image(path, 8)

    assert (pixels[:, :4] == 255).all()
    assert (pixels[:, 5:] == 40).all()


def test_grey_l_image(tmp_path: Path) -> None:
    path = save_mode_image(tmp_path, "grey.jpg", Image.new("L", (12, 12), 90))

    pixels = load_image(path, 6)

    assert pixels.shape == (6, 6, 3)
    assert np.abs(pixels.astype(int) - 90).max() <= 2


def test_palette_image(tmp_path: Path) -> None:
    image = Image.new("RGB", (8, 8), (0, 200, 0)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert image.mode == "P"
    path = save_mode_image(tmp_path, "palette.gif", image)

    pixels = load_image(path, 8)

    assert np.abs(pixels.astype(int) - (0, 200, 0)).max() <= 2


def test_palette_image_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(0, (0, 0, 4, 8))
    image.info["transparency"] = 0
    path = tmp_path / "palette_transparent.png"
    image.save(path, transparency=0)

    pixels = load_image(path, 8)

    assert (pixels[:, :4] == 255).all()
    assert (pixels[:, 5:] == (255, 0, 0)).all()


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = save_mode_image(tmp_path, "cmyk.jpg", Image.new("CMYK", (8, 8), (0, 255, 255, 0)))
    assert Image.open(path).mode == "CMYK"

    pixels = load_image(path, 8)

    assert pixels.shape == (8, 8, 3)
    assert pixels[..., 0].min() > 230 and pixels[..., 1:].max() < 25


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.zeros((8, 8), dtype=np.uint16)
    values[:, 4:] = 65535
    values[:, :4] = 32896  # 128 * 257
    path = save_mode_image(tmp_path, "deep.png", Image.fromarray(values))
    assert Image.open(path).mode.startswith("I")

    pixels = load_image(path, 8)

    assert pixels.dtype == np.uint8 and pixels.shape == (8, 8, 3)
    assert (pixels[:, :4] == 128).all()
    assert (pixels[:, 5:] == 255).all()


def test_one_bit_image(tmp_path: Path) -> None:
    image = Image.new("1", (8, 8), 0)
    image.paste(1, (4, 0, 8, 8))
    path = save_mode_image(tmp_path, "bits.png", image)

    pixels = load_image(path, 8)

    assert (pixels[:, :4] == 0).all() and (pixels[:, 4:] == 255).all()


def test_data_modules_do_not_import_heavy_frameworks() -> None:
    code = (
        "import sys, core.data, core.demo_data; "
        "heavy = [m for m in ('tensorflow', 'keras', 'ray') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
