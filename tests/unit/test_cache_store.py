"""Unit tests for core.cache_store: atomic entries, checksums, locks, cleanup, remote roots.

Remote roots are exercised for real: through pyarrow's LocalFileSystem (``file://``)
and through pyarrow's S3FileSystem against a local moto S3 server (a dev dependency).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from core.cache_store import (
    CacheStoreError,
    CorruptEntryError,
    EntryStore,
)

NAME = "vgg16-32px-block5_pool-float16-0123456789abcdef0123"


def sample_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    generator = np.random.default_rng(seed)
    return {
        "train_features": generator.standard_normal((6, 2, 2, 8)).astype("float16"),
        "train_labels": np.arange(6, dtype=np.int32) % 2,
    }


def sample_meta() -> dict[str, object]:
    return {"name": NAME, "shapes": {"train": [6, 2, 2, 8]}, "dtype": "float16"}


def assert_same_arrays(left: dict[str, np.ndarray], right: dict[str, np.ndarray]) -> None:
    assert sorted(left) == sorted(right)
    for name in left:
        assert left[name].dtype == right[name].dtype, name
        np.testing.assert_array_equal(left[name], right[name])


# --- local root -------------------------------------------------------------------------


def test_write_then_read_round_trips_with_checksums(tmp_path: Path) -> None:
    store = EntryStore(tmp_path / "cache")
    arrays = sample_arrays()

    assert not store.has(NAME)
    final = store.write(NAME, arrays, sample_meta())

    assert store.has(NAME)
    # Today's layout: entries/<name>/meta.json and <name>/<array>.npy, nothing staged left.
    assert final == tmp_path / "cache" / "entries" / NAME
    assert sorted(p.name for p in final.iterdir()) == [
        "meta.json",
        "train_features.npy",
        "train_labels.npy",
    ]
    assert [p.name for p in final.parent.iterdir()] == [NAME]
    meta, loaded = store.read(NAME)
    assert_same_arrays(loaded, arrays)
    assert isinstance(loaded["train_features"], np.memmap)
    assert not loaded["train_features"].flags.writeable
    assert meta["shapes"] == {"train": [6, 2, 2, 8]}
    assert meta["format"] == 1
    for filename, recorded in meta["files"].items():
        data = (final / filename).read_bytes()
        assert recorded == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert store.meta(NAME) == meta
    _, in_memory = store.read(NAME, mmap=False)
    assert not isinstance(in_memory["train_features"], np.memmap)


def test_an_entry_written_before_checksums_is_still_readable(tmp_path: Path) -> None:
    # What core.features.FeatureCache writes today: arrays and a meta.json without "files".
    folder = tmp_path / "entries" / NAME
    folder.mkdir(parents=True)
    arrays = sample_arrays()
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
    (folder / "meta.json").write_text(json.dumps(sample_meta()))

    meta, loaded = EntryStore(tmp_path).read(NAME)

    assert_same_arrays(loaded, arrays)
    assert "files" not in meta


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
@pytest.mark.parametrize("verify", [True, False])
def test_a_damaged_file_is_reported_by_name(tmp_path: Path, damage: str, verify: bool) -> None:
    store = EntryStore(tmp_path)
    final = store.write(NAME, sample_arrays(), sample_meta())
    target = final / "train_features.npy"
    data = bytearray(target.read_bytes())
    if damage == "truncated":
        data = data[: len(data) - 10]
    else:
        data[-3] ^= 0x40  # inside the array data: np.load alone cannot notice

    target.write_bytes(bytes(data))

    if damage == "flipped byte" and not verify:
        store.read(NAME, verify=False)  # documented: only verification catches this
        return
    with pytest.raises(CorruptEntryError) as caught:
        store.read(NAME, verify=verify)
    assert str(target) in str(caught.value)
    assert caught.value.path == str(target)


def test_a_discarded_corrupt_entry_can_be_rebuilt(tmp_path: Path) -> None:
    store = EntryStore(tmp_path)
    final = store.write(NAME, sample_arrays(0), sample_meta())
    (final / "train_labels.npy").write_bytes(b"garbage")
    with pytest.raises(CorruptEntryError):
        store.read(NAME)

    store.discard(NAME)
    store.discard(NAME)  # quiet when already gone

    assert not store.has(NAME)
    store.write(NAME, sample_arrays(1), sample_meta())
    assert_same_arrays(store.read(NAME)[1], sample_arrays(1))


def test_a_folder_without_meta_is_not_an_entry_and_is_replaced(tmp_path: Path) -> None:
    store = EntryStore(tmp_path)
    debris = tmp_path / "entries" / NAME
    debris.mkdir(parents=True)
    np.save(debris / "train_features.npy", np.zeros(3))

    assert not store.has(NAME)
    assert store.entries() == []
    with pytest.raises(CacheStoreError, match=NAME):
        store.read(NAME)

    store.write(NAME, sample_arrays(), sample_meta())

    assert_same_arrays(store.read(NAME)[1], sample_arrays())


def test_write_keeps_an_entry_another_process_completed_first(tmp_path: Path) -> None:
    store = EntryStore(tmp_path)
    store.write(NAME, sample_arrays(0), {"by": "first"})

    store.write(NAME, sample_arrays(1), {"by": "second"})

    meta, arrays = store.read(NAME)
    assert meta["by"] == "first"
    assert_same_arrays(arrays, sample_arrays(0))
    assert [p.name for p in (tmp_path / "entries").iterdir()] == [NAME]


def test_entries_remove_and_names(tmp_path: Path) -> None:
    store = EntryStore(tmp_path)
    first = store.write("a-entry", sample_arrays(), {"created": "2026-01-01T00:00:00+0000"})
    store.write("b-entry", {"x": np.ones(4)}, {})
    (tmp_path / "entries" / "no-meta").mkdir()

    listed = store.entries()

    assert [entry.name for entry in listed] == ["a-entry", "b-entry"]
    assert listed[0].created == "2026-01-01T00:00:00+0000"
    assert listed[0].total_bytes == sum(p.stat().st_size for p in first.iterdir())
    assert (listed[0].local, listed[0].remote) == (True, False)
    store.remove("a-entry")
    assert [entry.name for entry in store.entries()] == ["b-entry"]
    with pytest.raises(CacheStoreError, match="'a-entry'"):
        store.remove("a-entry")
    for bad in ("../escape", ".hidden", "a/b", ""):
        with pytest.raises(CacheStoreError, match="cache entry name"):
            store.has(bad)
    with pytest.raises(CacheStoreError, match="'d-entry'"):
        store.write("d-entry", {"objects": np.array([{}, None], dtype=object)}, {})
    assert not store.has("d-entry")
    with pytest.raises(CacheStoreError, match="'c-entry'"):
        store.write("c-entry", {"x": np.ones(2)}, {"bad": object()})
    assert not store.has("c-entry")
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "entries").iterdir())


def test_a_new_store_creates_nothing(tmp_path: Path) -> None:
    store = EntryStore(tmp_path / "nowhere")

    assert store.entries() == []
    assert not store.has(NAME)
    assert store.clean_staging() == 0
    assert not (tmp_path / "nowhere").exists()


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    for item in [path, *path.rglob("*")]:
        os.utime(item, (then, then))


def test_clean_staging_removes_only_stale_leftovers(tmp_path: Path) -> None:
    store = EntryStore(tmp_path)
    store.write(NAME, sample_arrays(), sample_meta())
    entries = tmp_path / "entries"
    stale = entries / f".tmp-{NAME}-dead0001"
    fresh = entries / f".tmp-{NAME}-live0002"
    interrupted_removal = entries / f".rm-{NAME}-dead0003"
    for folder in (stale, fresh, interrupted_removal):
        folder.mkdir()
        (folder / "train_features.npy").write_bytes(b"partial")
    age(stale, 7200)
    user_file = tmp_path / "notes.txt"
    user_file.write_text("mine")
    (tmp_path / "builds.jsonl").write_text("{}\n")

    assert store.clean_staging(older_than_s=3600) == 2

    assert sorted(p.name for p in entries.iterdir()) == sorted([NAME, fresh.name])
    assert user_file.read_text() == "mine"
    assert (tmp_path / "builds.jsonl").exists()
    assert_same_arrays(store.read(NAME)[1], sample_arrays())


# --- locking, across real processes -----------------------------------------------------


def build_with_lock(root: str, name: str, log: str, out: str, barrier: object) -> None:
    """Child process: the has/lock/has/build pattern, then a read."""
    store = EntryStore(root)
    barrier.wait()  # type: ignore[attr-defined]
    if not store.has(name):
        with store.lock(name):
            if not store.has(name):
                with open(log, "a") as handle:
                    handle.write(f"{os.getpid()}\n")
                time.sleep(1.0)  # a slow build: the other process reaches the lock meanwhile
                store.write(name, sample_arrays(), sample_meta())
    _, arrays = store.read(name)
    Path(out).write_text(json.dumps({k: v.tolist() for k, v in arrays.items()}))


def write_without_lock(root: str, name: str, seed: int, barrier: object) -> None:
    store = EntryStore(root)
    barrier.wait()  # type: ignore[attr-defined]
    store.write(name, sample_arrays(seed), {"seed": seed})


def run_processes(target: Callable[..., None], argument_lists: list[tuple[object, ...]]) -> None:
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=target, args=args) for args in argument_lists]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0] * len(processes)


def test_two_processes_build_an_entry_exactly_once(tmp_path: Path) -> None:
    root, log = tmp_path / "cache", tmp_path / "builds.log"
    barrier = multiprocessing.get_context("spawn").Barrier(2)
    outs = [tmp_path / f"read-{i}.json" for i in range(2)]

    run_processes(build_with_lock, [(str(root), NAME, str(log), str(out), barrier) for out in outs])

    assert len(log.read_text().splitlines()) == 1
    expected = {k: v.tolist() for k, v in sample_arrays().items()}
    assert [json.loads(out.read_text()) for out in outs] == [expected, expected]


def test_racing_writers_without_a_lock_leave_one_whole_entry(tmp_path: Path) -> None:
    barrier = multiprocessing.get_context("spawn").Barrier(3)

    run_processes(write_without_lock, [(str(tmp_path), NAME, seed, barrier) for seed in range(3)])

    store = EntryStore(tmp_path)
    meta, arrays = store.read(NAME)  # verified: files and meta.json come from one writer
    assert_same_arrays(arrays, sample_arrays(meta["seed"]))
    assert [p.name for p in (tmp_path / "entries").iterdir()] == [NAME]


def test_lock_logs_once_while_waiting(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = EntryStore(tmp_path)
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with store.lock(NAME):
            held.set()
            release.wait(30)

    def waiter() -> None:
        with store.lock(NAME):
            pass

    caplog.set_level(logging.INFO, logger="core.cache_store")
    threads = [threading.Thread(target=holder), threading.Thread(target=waiter)]
    threads[0].start()
    assert held.wait(30)
    threads[1].start()
    deadline = time.monotonic() + 30
    while "waiting" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threads[1].is_alive(), "the second locker did not wait for the first"
    release.set()
    for thread in threads:
        thread.join(30)

    assert not threads[1].is_alive()
    waits = [r for r in caplog.records if "waiting" in r.getMessage()]
    assert len(waits) == 1 and NAME in waits[0].getMessage()
    assert (tmp_path / "locks" / f"{NAME}.lock").exists()


# --- remote roots -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def s3_base_uri() -> Iterator[str]:
    """A bucket on a local moto S3 server, as a pyarrow URI prefix (query options appended)."""
    import boto3
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as patch:
        for variable, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }.items():
            patch.setenv(variable, value)
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            endpoint = f"127.0.0.1:{port}"
            boto3.client("s3", endpoint_url=f"http://{endpoint}").create_bucket(Bucket="bucket")
            yield f"s3://bucket/{{prefix}}?endpoint_override={endpoint}&scheme=http&region=us-east-1"
        finally:
            server.stop()


@pytest.fixture(params=["file", "s3"])
def remote_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return (tmp_path / "remote").as_uri()
    base: str = request.getfixturevalue("s3_base_uri")
    return base.format(prefix=f"cache-{tmp_path.name}")


def test_remote_round_trip_through_an_empty_mirror(remote_uri: str, tmp_path: Path) -> None:
    writer = EntryStore(remote_uri, mirror_dir=tmp_path / "mirror-a")
    reader = EntryStore(remote_uri, mirror_dir=tmp_path / "mirror-b")
    assert writer.is_remote
    assert not reader.has(NAME)

    writer.write(NAME, sample_arrays(), sample_meta())

    assert reader.has(NAME)
    assert not (tmp_path / "mirror-b" / "entries" / NAME).exists()
    assert reader.meta(NAME)["shapes"] == {"train": [6, 2, 2, 8]}
    listed = reader.entries()
    assert [(e.name, e.local, e.remote) for e in listed] == [(NAME, False, True)]
    meta, arrays = reader.read(NAME)
    assert_same_arrays(arrays, sample_arrays())
    assert isinstance(arrays["train_features"], np.memmap)
    assert (tmp_path / "mirror-b" / "entries" / NAME / "meta.json").is_file()
    assert [(e.name, e.local, e.remote) for e in reader.entries()] == [(NAME, True, True)]
    assert meta["files"] == writer.meta(NAME)["files"]

    reader.remove(NAME)

    assert not writer.has(NAME)
    assert not reader.has(NAME)
    assert reader.entries() == []
    # The writer's mirror still holds a copy: listed as local only, but not an entry to read.
    assert [(e.name, e.local, e.remote) for e in writer.entries()] == [(NAME, True, False)]
    for store in (reader, writer):
        with pytest.raises(CacheStoreError, match=NAME):
            store.read(NAME)


def test_a_stale_mirror_copy_is_replaced(remote_uri: str, tmp_path: Path) -> None:
    first = EntryStore(remote_uri, mirror_dir=tmp_path / "mirror-a")
    first.write(NAME, sample_arrays(0), sample_meta())
    reader = EntryStore(remote_uri, mirror_dir=tmp_path / "mirror-b")
    reader.read(NAME)
    # Someone removes and rebuilds the remote entry with other numbers.
    first.remove(NAME)
    EntryStore(remote_uri, mirror_dir=tmp_path / "mirror-c").write(
        NAME, sample_arrays(1), sample_meta()
    )

    _, arrays = reader.read(NAME)

    assert_same_arrays(arrays, sample_arrays(1))


def test_a_damaged_mirror_copy_is_downloaded_again(remote_uri: str, tmp_path: Path) -> None:
    EntryStore(remote_uri, mirror_dir=tmp_path / "mirror-a").write(
        NAME, sample_arrays(), sample_meta()
    )
    reader = EntryStore(remote_uri, mirror_dir=tmp_path / "mirror-b")
    reader.read(NAME)
    mirrored = tmp_path / "mirror-b" / "entries" / NAME / "train_features.npy"
    mirrored.write_bytes(mirrored.read_bytes()[:-4])

    _, arrays = reader.read(NAME)

    assert_same_arrays(arrays, sample_arrays())
    assert reader.has(NAME)


def test_a_corrupt_remote_file_is_named_and_discarded(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    uri = remote.as_uri()
    EntryStore(uri, mirror_dir=tmp_path / "mirror-a").write(NAME, sample_arrays(), sample_meta())
    target = remote / "entries" / NAME / "train_labels.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01
    target.write_bytes(bytes(data))
    reader = EntryStore(uri, mirror_dir=tmp_path / "mirror-b")

    with pytest.raises(CorruptEntryError, match="train_labels.npy"):
        reader.read(NAME)
    reader.discard(NAME)

    assert not (remote / "entries" / NAME).exists()
    assert not reader.has(NAME)


class FailingUploads:
    """Wraps a pyarrow filesystem: records uploads, and fails the nth one if asked to."""

    def __init__(self, fs: object, fail_at: int | None = None) -> None:
        self._fs = fs
        self._fail_at = fail_at
        self.uploaded: list[str] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._fs, name)

    def open_output_stream(self, path: str) -> object:
        if len(self.uploaded) == self._fail_at:
            raise OSError("connection reset (injected)")
        self.uploaded.append(path.rsplit("/", 1)[-1])
        return self._fs.open_output_stream(path)  # type: ignore[attr-defined]


def test_remote_upload_puts_meta_last_and_an_interrupted_one_is_no_entry(
    remote_uri: str, tmp_path: Path
) -> None:
    store = EntryStore(remote_uri, mirror_dir=tmp_path / "mirror")
    remote = store._remote
    assert remote is not None
    real_fs = remote.fs
    remote.fs = failing = FailingUploads(real_fs, fail_at=1)

    with pytest.raises(CacheStoreError, match=f"{NAME}.*upload"):
        store.write(NAME, sample_arrays(), sample_meta())

    assert failing.uploaded == ["train_features.npy"]
    assert not store.has(NAME)
    assert [(e.name, e.local, e.remote) for e in store.entries()] == [(NAME, True, False)]
    remote.fs = recording = FailingUploads(real_fs)
    store.write(NAME, sample_arrays(), sample_meta())  # a retry uploads the mirror's copy
    assert recording.uploaded == ["train_features.npy", "train_labels.npy", "meta.json"]
    fresh = EntryStore(remote_uri, mirror_dir=tmp_path / "fresh")
    assert_same_arrays(fresh.read(NAME)[1], sample_arrays())


def test_incomplete_remote_uploads_are_cleaned_when_stale(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    store = EntryStore(remote.as_uri(), mirror_dir=tmp_path / "mirror")
    killed = remote / "entries" / "killed-upload"
    killed.mkdir(parents=True)
    (killed / "x.npy").write_bytes(b"partial")
    age(killed, 7200)
    recent = remote / "entries" / "upload-in-progress"
    recent.mkdir()
    (recent / "x.npy").write_bytes(b"partial")

    assert not store.has("killed-upload")
    assert store.entries() == []
    assert store.clean_staging(older_than_s=3600) == 1

    assert not killed.exists()
    assert recent.exists()


def test_a_bad_uri_is_a_store_error() -> None:
    with pytest.raises(CacheStoreError, match="nosuchscheme://"):
        EntryStore("nosuchscheme://bucket/prefix")


def test_default_mirror_is_per_uri(tmp_path: Path) -> None:
    one = EntryStore((tmp_path / "one").as_uri())
    two = EntryStore((tmp_path / "two").as_uri())

    assert one.local_root != two.local_root
    assert one.local_root.parent == Path("~/.cache/bottletune/mirror").expanduser()
