"""The feature cache: computed once per key, persisted as plain npy, read back safely."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.backbones import INPUT_CUT
from core.data import load_images, scan_dataset
from core.features import FeatureCache, FeatureCacheError, FeatureKey, FeatureRequest

CUTS = ["block5_pool", "block4_pool"]


def ensure(cache: FeatureCache, data: Path, **overrides: object):  # type: ignore[no-untyped-def]
    arguments: dict[str, object] = {
        "backbone": "vgg16",
        "weights": "none",
        "image_size": 32,
        "cuts": CUTS,
        "seed": 0,
        "progress": False,
    }
    arguments.update(overrides)
    progress = bool(arguments.pop("progress"))
    request = FeatureRequest(**arguments)  # type: ignore[arg-type]
    return cache.ensure(scan_dataset(data), request, progress=progress)


def test_features_are_computed_once_and_then_read_from_disk(
    shapes_data: Path, tmp_path: Path
) -> None:
    cache = FeatureCache(tmp_path / "cache")
    first = ensure(cache, shapes_data)
    assert [build["cut"] for build in cache.builds()] == CUTS
    assert len(cache.stats.misses) == 2 and not cache.stats.hits

    again = FeatureCache(tmp_path / "cache")  # a later search, new process-level object
    second = ensure(again, shapes_data)
    assert len(again.builds()) == 2, "a second search on the same data recomputed features"
    assert len(again.stats.hits) == 2 and not again.stats.misses
    for cut in CUTS:
        for split in ("train", "validation"):
            np.testing.assert_array_equal(first.cuts[cut][split], second.cuts[cut][split])
    assert first.cuts["block5_pool"]["train"].shape == (24, 1, 1, 512)
    assert first.cuts["block4_pool"]["validation"].shape == (12, 2, 2, 512)
    assert list(first.labels["train"]).count(0) == 12


def test_only_missing_cuts_are_computed(shapes_data: Path, tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    ensure(cache, shapes_data, cuts=["block5_pool"])
    ensure(cache, shapes_data, cuts=["block5_pool", "block3_pool", INPUT_CUT])
    assert [b["cut"] for b in cache.builds()] == ["block5_pool", "block3_pool", INPUT_CUT]


def test_key_changes_with_everything_the_numbers_depend_on() -> None:
    base = FeatureKey("vgg16", "none-seed0", 32, "abc", "block5_pool")
    variants = [
        FeatureKey("mobilenet", "none-seed0", 32, "abc", "block5_pool"),
        FeatureKey("vgg16", "imagenet", 32, "abc", "block5_pool"),
        FeatureKey("vgg16", "none-seed0", 48, "abc", "block5_pool"),
        FeatureKey("vgg16", "none-seed0", 32, "abd", "block5_pool"),
        FeatureKey("vgg16", "none-seed0", 32, "abc", "block4_pool"),
        FeatureKey("vgg16", "none-seed0", 32, "abc", "block5_pool", "float16"),
        FeatureKey("vgg16", "none-seed0", 32, "abc", "block5_pool", "float32", 0.5, 0),
        FeatureKey("vgg16", "none-seed0", 32, "abc", "block5_pool", "float32", 0.5, 1),
        FeatureKey("vgg16", "none-seed0", 32, "abc", "block5_pool", "float32", 1.0, 0),
    ]
    assert len({base.name} | {variant.name for variant in variants}) == 10


def test_a_key_is_either_plain_or_a_view() -> None:
    with pytest.raises(FeatureCacheError, match="view"):
        FeatureKey("vgg16", "none-seed0", 32, "abc", "block5_pool", "float32", 0.5, None)
    with pytest.raises(FeatureCacheError, match="view"):
        FeatureKey("vgg16", "none-seed0", 32, "abc", "block5_pool", "float32", 0.0, 3)
    with pytest.raises(FeatureCacheError, match="float64"):
        FeatureKey("vgg16", "none-seed0", 32, "abc", "block5_pool", "float64")


def test_changed_data_gets_new_features(shapes_data: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(shapes_data, copy)
    cache = FeatureCache(tmp_path / "cache")
    ensure(cache, copy, cuts=["block5_pool"])
    victim = sorted((copy / "train").rglob("*.png"))[0]
    victim.write_bytes(sorted((copy / "train").rglob("*.png"))[1].read_bytes())
    ensure(cache, copy, cuts=["block5_pool"])
    assert len(cache.builds()) == 2


def test_entries_are_plain_npy_and_json(shapes_data: Path, tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    ensure(cache, shapes_data, cuts=["block5_pool"], augmentations=[0.5], views=2)
    entries = sorted(p.name for p in cache.entries_dir.iterdir())
    assert len(entries) == 3 and not [e for e in entries if e.startswith(".tmp")]
    for entry in cache.entries_dir.iterdir():
        suffixes = {p.suffix for p in entry.iterdir()}
        assert suffixes == {".npy", ".json"}
        for array_file in entry.glob("*.npy"):
            np.load(array_file, allow_pickle=False)  # raises if anything needed unpickling
        meta = json.loads((entry / "meta.json").read_text())
        assert meta["key"]["dataset"] == scan_dataset(shapes_data).fingerprint


def test_views_are_computed_once_per_strength_and_seed_and_shared(
    shapes_data: Path, tmp_path: Path
) -> None:
    cache = FeatureCache(tmp_path / "cache")
    bundle = ensure(cache, shapes_data, augmentations=[0.0, 0.5, 1.0], views=2)
    builds = cache.builds()
    # 2 plain cuts + 2 strengths x 2 views x 2 cuts; a strength of 0 has no views.
    assert len(builds) == 2 + 8
    assert {(b["augmentation"], b["view"]) for b in builds if b["view"] is not None} == {
        (0.5, 0),
        (0.5, 1),
        (1.0, 0),
        (1.0, 1),
    }
    views = bundle.views_of("block4_pool", 0.5)
    plain = bundle.features("block4_pool", "train")
    assert len(views) == 2 and views[0].shape == plain.shape
    assert not np.allclose(views[0], views[1]), "two views of one strength are identical"
    assert not np.allclose(views[0], plain), "a view is not augmented"
    assert bundle.views_of("block5_pool", 1.0)[0].shape == (24, 1, 1, 512)

    # A later search with more views and another strength builds only what is new.
    later = FeatureCache(tmp_path / "cache")
    again = ensure(later, shapes_data, augmentations=[0.5, 0.75], views=3)
    new = later.builds()[len(builds) :]
    assert sorted((b["augmentation"], b["view"]) for b in new) == sorted(
        [(0.5, 2)] * 2 + [(0.75, v) for v in range(3)] * 2
    )
    np.testing.assert_array_equal(again.views_of("block4_pool", 0.5)[1], views[1])
    with pytest.raises(FeatureCacheError, match="augmentation=0.25"):
        again.views_of("block4_pool", 0.25)


def test_float16_entries_halve_the_size_and_keep_the_numbers(
    shapes_data: Path, tmp_path: Path
) -> None:
    cache = FeatureCache(tmp_path / "cache")
    full = ensure(cache, shapes_data, cuts=["block4_pool"], dtype="float32")
    half = ensure(cache, shapes_data, cuts=["block4_pool"], dtype="float16")
    single = full.features("block4_pool", "train")
    reduced = half.features("block4_pool", "train")
    assert single.dtype == np.float32 and reduced.dtype == np.float16
    assert reduced.nbytes * 2 == single.nbytes
    np.testing.assert_allclose(reduced.astype("float32"), single, rtol=1e-3, atol=1e-6)


def test_input_cut_holds_preprocessed_images(shapes_data: Path, tmp_path: Path) -> None:
    from keras.applications import vgg16

    cache = FeatureCache(tmp_path / "cache")
    bundle = ensure(cache, shapes_data, cuts=[INPUT_CUT])
    images = load_images(scan_dataset(shapes_data).splits["validation"], 32).images
    expected = vgg16.preprocess_input(images.astype("float32"))
    np.testing.assert_allclose(bundle.cuts[INPUT_CUT]["validation"], expected, rtol=1e-6)


def test_an_entry_folder_without_meta_is_rebuilt(shapes_data: Path, tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    ensure(cache, shapes_data, cuts=["block5_pool"])
    entry = next(cache.entries_dir.iterdir())
    (entry / "meta.json").unlink()
    bundle = ensure(cache, shapes_data, cuts=["block5_pool"])
    assert (entry / "meta.json").is_file()
    assert len(cache.builds()) == 2
    assert bundle.cuts["block5_pool"]["train"].shape == (24, 1, 1, 512)


def test_random_init_features_are_keyed_by_keras_version() -> None:
    from importlib.metadata import version

    from core.backbones import weights_identity

    assert version("keras") in weights_identity("none", 0)


def _warm(root: str, data: str, started: Any) -> int:
    """One process's search preparation: wait for the start signal, then ensure."""
    started.wait()
    cache = FeatureCache(root)
    ensure(cache, Path(data), cuts=["block5_pool"])
    return len(cache.stats.misses)


def test_concurrent_warmers_build_each_entry_once(shapes_data: Path, tmp_path: Path) -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    started = context.Manager().Event()
    root = str(tmp_path / "cache")
    with context.Pool(2) as pool:
        results = [pool.apply_async(_warm, (root, str(shapes_data), started)) for _ in range(2)]
        started.set()
        misses = [result.get(timeout=300) for result in results]
    assert misses == [1, 1], "both processes saw the entry missing at the start"
    builds = FeatureCache(root).builds()
    assert len(builds) == 1, f"the entry was built {len(builds)} times"


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_entry_is_detected_and_rebuilt(
    shapes_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    cache = FeatureCache(tmp_path / "cache")
    first = ensure(cache, shapes_data, cuts=["block5_pool"])
    expected = np.array(first.features("block5_pool", "train"))
    target = next(cache.entries_dir.iterdir()) / "train_features.npy"
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        target.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[-5] ^= 0xFF  # same size, one byte of the numbers altered
        target.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        again = ensure(FeatureCache(tmp_path / "cache"), shapes_data, cuts=["block5_pool"])
    assert "rebuilding cache entry" in caplog.text and str(target) in caplog.text
    assert len(cache.builds()) == 2
    np.testing.assert_array_equal(again.features("block5_pool", "train"), expected)


def test_a_damaged_entry_another_process_rebuilt_meanwhile_is_kept(
    shapes_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes find one entry damaged: the one that waits for the lock reads the rebuild."""
    cache = FeatureCache(tmp_path / "cache")
    ensure(cache, shapes_data, cuts=["block5_pool"])
    target = next(cache.entries_dir.iterdir()) / "train_features.npy"
    target.write_bytes(target.read_bytes()[:-64])

    other = FeatureCache(tmp_path / "cache")  # the process that got the lock first
    real_lock = cache.store.lock
    discarded: list[str] = []

    @contextlib.contextmanager
    def lock_after_the_other_process(name: str) -> Iterator[None]:
        ensure(other, shapes_data, cuts=["block5_pool"])  # it rebuilds, then releases
        with real_lock(name):
            yield

    monkeypatch.setattr(cache.store, "lock", lock_after_the_other_process)
    monkeypatch.setattr(cache.store, "discard", discarded.append)
    bundle = ensure(cache, shapes_data, cuts=["block5_pool"])

    assert len(cache.builds()) == 2, "the entry was rebuilt twice"
    assert not discarded, "the waiting process removed the other's good rebuild"
    assert bundle.features("block5_pool", "train").shape == (24, 1, 1, 512)


def test_a_cache_at_a_uri_is_reused_from_another_machine(shapes_data: Path, tmp_path: Path) -> None:
    """A remote cache (here file://, any pyarrow URI works alike) serves a fresh mirror."""
    uri = (tmp_path / "bucket").as_uri()
    first = FeatureCache(uri, mirror_dir=tmp_path / "mirror-a")
    built = ensure(first, shapes_data, cuts=["block5_pool"])
    assert first.store.is_remote and len(first.stats.misses) == 1
    later = FeatureCache(uri, mirror_dir=tmp_path / "mirror-b")  # a new cluster's empty mirror
    reused = ensure(later, shapes_data, cuts=["block5_pool"])
    assert later.stats.hits == first.stats.misses and not later.stats.misses
    assert not later.builds(), "the second cluster extracted features again"
    np.testing.assert_array_equal(
        reused.features("block5_pool", "validation"), built.features("block5_pool", "validation")
    )


def test_plain_entries_hand_on_each_cut_as_soon_as_it_is_stored(
    shapes_data: Path, tmp_path: Path
) -> None:
    """One pass builds every missing cut; the first is out before the others are written."""
    index = scan_dataset(shapes_data)
    cache = FeatureCache(tmp_path / "cache")
    ensure(cache, shapes_data, cuts=["block4_pool"])  # cached already: read, not rebuilt
    request = FeatureRequest(
        backbone="vgg16", weights="none", image_size=32,
        cuts=("block5_pool", "block4_pool", "block3_pool"),
    )  # fmt: skip
    keys = {key.cut: key for key in cache.keys_for(index, request)}
    entries = cache.plain_entries(index, request, progress=False)
    first = next(entries)
    assert first[0] == "block5_pool" and cache.has(keys["block5_pool"])
    assert not cache.has(keys["block3_pool"]), "the wide cut was written before the first"
    rest = list(entries)
    assert [item[0] for item in rest] == ["block4_pool", "block3_pool"]
    assert [build["cut"] for build in cache.builds()] == [
        "block4_pool",
        "block5_pool",
        "block3_pool",
    ]
    assert sorted(cache.stats.hits) == [keys["block4_pool"].name]
    expected = ensure(FeatureCache(tmp_path / "cache"), shapes_data, cuts=list(request.cuts))
    for cut, got, got_labels in [first, *rest]:
        for split in ("train", "validation"):
            np.testing.assert_array_equal(got[split], expected.cuts[cut][split])
            np.testing.assert_array_equal(got_labels[split], expected.labels[split])


@pytest.mark.parametrize("value", [1e6, float("nan")])
def test_features_float16_cannot_hold_are_refused_naming_the_entry(
    tmp_path: Path, value: float
) -> None:
    cache = FeatureCache(tmp_path / "cache")
    key = FeatureKey("vgg16", "none-seed0", 32, "abc", "block5_pool", "float16")
    features = np.zeros((4, 1, 1, 8), dtype="float32")
    features[2, 0, 0, 5] = -value
    with pytest.raises(FeatureCacheError, match=rf"{key.name}, train features.*float32"):
        cache.store_entry(key, {"train": features}, {"train": np.zeros(4)}, ["a", "b"], 1.0)
    assert not cache.has(key)
