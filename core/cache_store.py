"""Where feature-cache entries live: atomic writes, checksums, locks, and remote storage.

An entry is a folder of ``.npy`` arrays plus a ``meta.json`` that lists every
array file with its size and sha256. ``meta.json`` is written last, so its
presence is what makes a folder an entry: a folder without one is debris.

Layout (a local root, or the mirror of a remote one)::

    ROOT/
      entries/<name>/meta.json          the entry is complete once this exists
      entries/<name>/<array>.npy
      entries/.tmp-<name>-<id>/         staging of a write or download in progress
      entries/.rm-<name>-<id>/          an entry being removed
      locks/<name>.lock                 one flock file per entry name

A remote root is any URI ``pyarrow.fs.FileSystem.from_uri`` accepts (``s3://``,
``gs://``, ``hdfs://``, ``file://``). It holds ``entries/<name>/...`` as above;
arrays are uploaded first and ``meta.json`` last. Entries are read from a local
mirror so that they can be memory-mapped.

The store keeps concurrent writers correct without a lock (each stages in its
own folder and the first rename wins); ``lock`` only saves duplicate work.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

logger = logging.getLogger(__name__)

ENTRY_FORMAT = 1
"""Version of the entry layout recorded in ``meta["format"]`` (files with sha256)."""
META_FILE = "meta.json"
STAGING_PREFIX = ".tmp-"
TRASH_PREFIX = ".rm-"
CHUNK_BYTES = 8 * 1024 * 1024
DEFAULT_MIRROR_ROOT = Path("~/.cache/bottletune/mirror")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+=-]{0,199}")
_ARRAY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")


class CacheStoreError(ValueError):
    """An entry is missing or cannot be stored (the message names the entry or file)."""


class CorruptEntryError(CacheStoreError):
    """An entry's file does not match its recorded size or checksum, or cannot be read.

    Attributes:
        path: The offending file.
    """

    def __init__(self, message: str, path: str | os.PathLike[str]) -> None:
        super().__init__(message)
        self.path = str(path)


@dataclass(frozen=True)
class EntryInfo:
    """One complete entry, as ``EntryStore.entries`` lists it.

    Attributes:
        name: Entry name (its folder name).
        meta: Contents of its ``meta.json`` (empty when that file is unreadable).
        total_bytes: Size of all its files.
        created: ``meta["created"]``, else the time ``meta.json`` was written.
        local: Present in the local root or mirror.
        remote: Present in the remote root (always False for a local root).
    """

    name: str
    meta: dict[str, Any]
    total_bytes: int
    created: str
    local: bool
    remote: bool


class EntryStore:
    """Cache entries in a local directory, or in remote storage with a local mirror.

    Creating a store touches nothing: folders appear on the first write or lock.

    Args:
        root: A local directory (``~`` is expanded), or a URI that
            ``pyarrow.fs.FileSystem.from_uri`` accepts, e.g. ``s3://bucket/cache``,
            ``gs://bucket/cache``, ``file:///abs/path`` or
            ``s3://bucket/cache?endpoint_override=host:9000&scheme=http``. Any
            URI, even ``file://``, is handled as remote storage.
        mirror_dir: Local copy of a remote root's entries (default:
            ``~/.cache/bottletune/mirror/<sha256 of the URI, 12 hex digits>``).
            Ignored for a local root.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        mirror_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        text = os.fspath(root)
        self._remote: _RemoteRoot | None = None
        if isinstance(root, str) and "://" in text:
            self._remote = _RemoteRoot(text)
            if mirror_dir is None:
                digest = hashlib.sha256(text.encode()).hexdigest()[:12]
                mirror_dir = DEFAULT_MIRROR_ROOT / digest
            self.local_root = Path(mirror_dir).expanduser()
        else:
            self.local_root = Path(text).expanduser()
        self.location = self._remote.display if self._remote else str(self.local_root)

    @property
    def is_remote(self) -> bool:
        """Whether entries live in remote storage (and ``local_root`` is their mirror)."""
        return self._remote is not None

    @property
    def entries_dir(self) -> Path:
        """The local folder of entries (the mirror's for a remote root)."""
        return self.local_root / "entries"

    def entry_dir(self, name: str) -> Path:
        """The local folder of one entry, whether or not it exists."""
        return self.entries_dir / _checked_name(name)

    def has(self, name: str) -> bool:
        """Whether a complete entry exists: in the remote root if there is one, else locally."""
        if self._remote is not None:
            return self._remote.has(_checked_name(name))
        return (self.entry_dir(name) / META_FILE).is_file()

    def meta(self, name: str) -> dict[str, Any]:
        """The ``meta.json`` of one entry (the remote copy for a remote root).

        Raises:
            CacheStoreError: naming the entry when it does not exist.
            CorruptEntryError: naming ``meta.json`` when it is not a JSON object.
        """
        if self._remote is not None:
            name = _checked_name(name)
            return _parse_meta(self._remote.read_meta(name), self._remote.meta_uri(name))
        path = self.entry_dir(name) / META_FILE
        try:
            return _parse_meta(path.read_bytes(), path)
        except FileNotFoundError:
            raise self._missing(name) from None

    def write(self, name: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Path:
        """Writes one entry atomically; when another process wrote it first, keeps theirs.

        Each array becomes ``<array name>.npy`` in a staging folder; ``meta.json``
        (``meta`` plus ``"format"`` and ``"files"``: size and sha256 per file)
        is written last and the folder renamed into place. For a remote root
        the entry is then uploaded, ``meta.json`` last, unless the remote
        already has it.

        Args:
            name: Entry name: letters, digits and ``._@+=-``, not starting with a dot.
            arrays: Arrays by name (numeric or bool dtypes; objects cannot be stored).
            meta: JSON-serialisable description of the entry. ``"format"`` and
                ``"files"`` are set by the store; ``"created"`` is added if absent.

        Returns:
            The local folder of the entry.

        Raises:
            CacheStoreError: naming the entry when a name, array or meta value
                cannot be stored, or the upload fails.
        """
        final = self.entry_dir(name)
        if not arrays:
            raise CacheStoreError(f"cache entry {name!r}: no arrays to store")
        for array_name in arrays:
            if not _ARRAY_NAME.fullmatch(array_name):
                raise CacheStoreError(
                    f"cache entry {name!r}: array name {array_name!r} must be letters, digits "
                    "and ._- (not starting with a dot)"
                )
        if (final / META_FILE).is_file():
            logger.debug("cache entry %s already exists locally; keeping it", name)
        else:
            staging = self._new_staging(name)
            try:
                files = {
                    f"{array_name}.npy": _save_array(staging / f"{array_name}.npy", array, name)
                    for array_name, array in arrays.items()
                }
                full_meta = {**meta, "format": ENTRY_FORMAT, "files": files}
                full_meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                try:
                    text = json.dumps(full_meta, indent=2)
                except (TypeError, ValueError) as error:
                    raise CacheStoreError(
                        f"cache entry {name!r}: meta is not JSON-serialisable: {error}"
                    ) from error
                _write_synced(staging / META_FILE, text.encode())
                self._move_into_place(staging, final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        if self._remote is not None and not self._remote.has(name):
            self._remote.upload(name, final)
        return final

    def read(
        self, name: str, *, verify: bool = True, mmap: bool = True
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Reads one entry; for a remote root, from the mirror (downloaded if missing or stale).

        Args:
            name: Entry name.
            verify: Check every file's size and sha256 against ``meta["files"]``
                (reads each file once in full). Entries written before checksums
                existed (no ``"files"``) are read unverified.
            mmap: Memory-map the arrays read-only instead of loading them.

        Returns:
            (meta, arrays by name).

        Raises:
            CacheStoreError: naming the entry when it does not exist.
            CorruptEntryError: naming the file that is truncated, altered or unreadable.
        """
        if self._remote is None:
            return self._read_folder(self.entry_dir(name), name, verify=verify, mmap=mmap)
        directory, downloaded = self._mirrored(name)
        try:
            return self._read_folder(directory, name, verify=verify, mmap=mmap)
        except CorruptEntryError as error:
            if downloaded:
                raise
            # Only the mirror's copy may be damaged: fetch it again before blaming the entry.
            logger.warning("%s; downloading cache entry %s again", error, name)
            self._trash(directory)
            directory, _ = self._mirrored(name)
            return self._read_folder(directory, name, verify=verify, mmap=mmap)

    def _read_folder(
        self, directory: Path, name: str, *, verify: bool, mmap: bool
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta_path = directory / META_FILE
        try:
            meta = _parse_meta(meta_path.read_bytes(), meta_path)
        except FileNotFoundError:
            raise self._missing(name) from None
        files = meta.get("files")
        if files is None:
            files = {path.name: None for path in sorted(directory.glob("*.npy"))}
        elif not isinstance(files, dict):
            raise CorruptEntryError(f"{meta_path}: 'files' is not a mapping", meta_path)
        arrays: dict[str, np.ndarray] = {}
        for filename, expected in files.items():
            path = directory / _checked_file_name(filename, meta_path)
            if verify and expected is not None:
                _verify_file(path, expected)
            try:
                arrays[filename[: -len(".npy")]] = np.load(
                    path, mmap_mode="r" if mmap else None, allow_pickle=False
                )
            except (OSError, ValueError) as error:
                raise CorruptEntryError(f"{path}: unreadable: {error}", path) from error
        return meta, arrays

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Holds an exclusive inter-process lock on one entry name.

        ``fcntl.flock`` on ``<root>/locks/<name>.lock`` (in the mirror for a
        remote root, so it serialises the processes of one machine only). Logs
        once at INFO when it has to wait. Not re-entrant: locking a name the
        process already holds waits forever. Use::

            if not store.has(name):
                with store.lock(name):
                    if not store.has(name):
                        store.write(name, build(), meta)
        """
        path = self.local_root / "locks" / f"{_checked_name(name)}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("waiting for another process to release cache entry %s", name)
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def entries(self) -> list[EntryInfo]:
        """Every complete entry, sorted by name: local ones plus, for a remote root, remote ones."""
        found: dict[str, EntryInfo] = {}
        if self.entries_dir.is_dir():
            for folder in sorted(self.entries_dir.iterdir()):
                meta_path = folder / META_FILE
                if folder.name.startswith(".") or not meta_path.is_file():
                    continue
                try:
                    meta = _meta_or_empty(meta_path.read_bytes(), meta_path)
                    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
                    created = _created(meta, meta_path.stat().st_mtime)
                except FileNotFoundError:
                    continue  # removed while we looked
                found[folder.name] = EntryInfo(folder.name, meta, size, created, True, False)
        if self._remote is not None:
            for name, (size, mtime) in self._remote.complete_entries().items():
                try:
                    data = self._remote.read_meta(name)
                except CacheStoreError:
                    continue  # removed while we looked
                meta = _meta_or_empty(data, self._remote.meta_uri(name))
                local = name in found
                found[name] = EntryInfo(name, meta, size, _created(meta, mtime), local, True)
        return [found[name] for name in sorted(found)]

    def remove(self, name: str) -> None:
        """Removes one entry, locally and remotely.

        Raises:
            CacheStoreError: naming the entry when it exists in neither place.
        """
        if not self._remove(name):
            raise self._missing(name)

    def discard(self, name: str) -> None:
        """Removes an entry (e.g. a corrupt one, so it can be rebuilt); no error if missing."""
        if self._remove(name):
            logger.warning("discarded cache entry %s from %s", name, self.location)

    def clean_staging(self, older_than_s: float = 3600) -> int:
        """Removes what killed runs left behind, and returns how many folders went.

        That is: staging folders not modified for ``older_than_s`` seconds,
        folders of interrupted removals, and (for a remote root) remote entry
        folders without ``meta.json`` older than ``older_than_s``. Nothing
        outside the store's ``entries`` folders is touched.
        """
        removed = 0
        cutoff = time.time() - older_than_s
        if self.entries_dir.is_dir():
            for folder in self.entries_dir.iterdir():
                if not folder.is_dir():
                    continue
                # An interrupted removal is never resumed, whatever its age.
                leftover = folder.name.startswith(TRASH_PREFIX) or (
                    folder.name.startswith(STAGING_PREFIX) and _newest_mtime(folder) < cutoff
                )
                if leftover:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed += 1
        if self._remote is not None:
            removed += self._remote.remove_incomplete(cutoff)
        if removed:
            logger.info("removed %d leftover folders from %s", removed, self.location)
        return removed

    def _remove(self, name: str) -> bool:
        """Removes an entry's folders (debris too); True if a complete entry was among them."""
        final = self.entry_dir(name)
        found = (final / META_FILE).is_file()
        if final.is_dir():
            self._trash(final)
        if self._remote is not None:
            found = self._remote.remove(name) or found
        return found

    def _missing(self, name: str) -> CacheStoreError:
        return CacheStoreError(f"no cache entry named {name!r} in {self.location}")

    def _new_staging(self, name: str) -> Path:
        self.entries_dir.mkdir(parents=True, exist_ok=True)
        staging = self.entries_dir / f"{STAGING_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        return staging

    def _move_into_place(self, staging: Path, final: Path) -> None:
        """Renames a finished staging folder to ``final``, replacing debris but not an entry."""
        for _ in range(3):
            if (final / META_FILE).is_file():
                logger.info("cache entry %s was written by another process first", final.name)
                return
            if final.is_dir():
                # No meta.json: nothing renames an unfinished entry into place, so
                # this is debris (e.g. removed by hand), not someone's entry.
                logger.warning("replacing incomplete cache entry %s", final)
                self._trash(final)
            try:
                os.rename(staging, final)
                return
            except OSError as error:
                if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        raise CacheStoreError(f"cache entry {final.name!r}: could not move {staging} into place")

    def _mirrored(self, name: str) -> tuple[Path, bool]:
        """The mirror's copy of a remote entry (downloaded when missing or different).

        Returns:
            (its folder, whether it was downloaded just now).
        """
        assert self._remote is not None
        remote_bytes = self._remote.read_meta(_checked_name(name))
        remote_meta = _parse_meta(remote_bytes, self._remote.meta_uri(name))
        final = self.entry_dir(name)
        with contextlib.suppress(OSError, ValueError):
            local = json.loads((final / META_FILE).read_bytes())
            if local.get("files") == remote_meta.get("files"):
                return final, False
        files = remote_meta.get("files")
        if not isinstance(files, dict):
            source = self._remote.meta_uri(name)
            raise CorruptEntryError(f"{source}: no 'files' to download", source)
        staging = self._new_staging(name)
        try:
            for filename in files:
                target = staging / _checked_file_name(filename, self._remote.meta_uri(name))
                self._remote.download(f"{name}/{filename}", target)
            _write_synced(staging / META_FILE, remote_bytes)
            if final.is_dir():
                # A stale mirror copy (the remote entry was rebuilt): replace it.
                self._trash(final)
            self._move_into_place(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return final, True

    def _trash(self, folder: Path) -> bool:
        """Removes a folder of ``entries``; False if it was already gone.

        It is renamed first, which is atomic: readers see all of an entry or none of it.
        """
        trash = self.entries_dir / f"{TRASH_PREFIX}{folder.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(folder, trash)
        except FileNotFoundError:
            return False
        shutil.rmtree(trash, ignore_errors=True)
        return True


class _RemoteRoot:
    """The ``entries`` folder of a pyarrow filesystem, addressed by entry name."""

    def __init__(self, uri: str) -> None:
        import pyarrow.fs

        self._fs_module = pyarrow.fs
        try:
            self.fs, path = pyarrow.fs.FileSystem.from_uri(uri)
        except (ValueError, OSError) as error:
            raise CacheStoreError(f"cache location {_display_uri(uri)!r}: {error}") from error
        self.display = _display_uri(uri)
        self.entries = f"{path.rstrip('/')}/entries"

    def _path(self, relative: str) -> str:
        return f"{self.entries}/{relative}"

    def meta_uri(self, name: str) -> str:
        """Where an entry's ``meta.json`` is, for messages."""
        return f"{self.display}/entries/{name}/{META_FILE}"

    def has(self, name: str) -> bool:
        info = self.fs.get_file_info(self._path(f"{name}/{META_FILE}"))
        return bool(info.type == self._fs_module.FileType.File)

    def read_meta(self, name: str) -> bytes:
        try:
            with self.fs.open_input_stream(self._path(f"{name}/{META_FILE}")) as stream:
                return bytes(stream.read())
        except FileNotFoundError:
            raise CacheStoreError(f"no cache entry named {name!r} in {self.display}") from None

    def download(self, relative: str, target: Path) -> None:
        try:
            with (
                self.fs.open_input_stream(self._path(relative)) as source,
                target.open("wb") as sink,
            ):
                shutil.copyfileobj(source, sink, CHUNK_BYTES)
        except OSError as error:
            # A transfer failure (throttling, a reset, a full disk) says nothing
            # about the entry: it must not be discarded as damaged.
            raise CacheStoreError(
                f"{self.display}/entries/{relative}: download failed: {error}"
            ) from error

    def upload(self, name: str, folder: Path) -> None:
        """Uploads an entry's arrays, then its ``meta.json``: readers never see it half-done."""
        files = sorted(p for p in folder.iterdir() if p.name != META_FILE) + [folder / META_FILE]
        try:
            self.fs.create_dir(self._path(name), recursive=True)
            for path in files:
                with (
                    path.open("rb") as source,
                    self.fs.open_output_stream(self._path(f"{name}/{path.name}")) as sink,
                ):
                    shutil.copyfileobj(source, sink, CHUNK_BYTES)
        except OSError as error:
            raise CacheStoreError(
                f"cache entry {name!r}: upload to {self.display} failed: {error}"
            ) from error
        logger.info("uploaded cache entry %s to %s", name, self.display)

    def _listing(self) -> dict[str, dict[str, Any]]:
        """Every file and folder under ``entries``: entry name -> path inside it -> FileInfo."""
        selector = self._fs_module.FileSelector(self.entries, recursive=True, allow_not_found=True)
        prefix = self.entries + "/"
        by_entry: dict[str, dict[str, Any]] = {}
        for info in self.fs.get_file_info(selector):
            name, _, inside = info.path.removeprefix(prefix).partition("/")
            by_entry.setdefault(name, {})
            if inside:
                by_entry[name][inside] = info
        return by_entry

    def complete_entries(self) -> dict[str, tuple[int, float]]:
        """(total bytes, meta.json mtime) of every remote entry that has a ``meta.json``."""
        result: dict[str, tuple[int, float]] = {}
        for name, infos in self._listing().items():
            meta = infos.get(META_FILE)
            if name.startswith(".") or meta is None:
                continue
            size = sum(i.size for i in infos.values() if i.type == self._fs_module.FileType.File)
            result[name] = (size, meta.mtime.timestamp() if meta.mtime else 0.0)
        return result

    def remove(self, name: str) -> bool:
        """Removes an entry's folder (debris too); True if it held a complete entry."""
        found = self.has(name)
        if found:
            # meta.json first: the entry stops existing before its arrays go.
            self.fs.delete_file(self._path(f"{name}/{META_FILE}"))
        if self.fs.get_file_info(self._path(name)).type != self._fs_module.FileType.NotFound:
            self.fs.delete_dir(self._path(name))
        return found

    def remove_incomplete(self, cutoff: float) -> int:
        """Deletes entry folders without ``meta.json`` whose newest file is older than cutoff."""
        removed = 0
        for name, infos in self._listing().items():
            times = [i.mtime.timestamp() for i in infos.values() if i.mtime is not None]
            if META_FILE not in infos and times and max(times) < cutoff:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.delete_dir(self._path(name))
                removed += 1
        return removed


class _HashingWriter:
    """A write-only file that hashes what passes through, so nothing is read back."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self.sha256.update(data)
        self.size += memoryview(data).nbytes
        return self._file.write(data)


def _save_array(path: Path, array: np.ndarray, name: str) -> dict[str, Any]:
    with path.open("wb") as file:
        writer = _HashingWriter(file)
        try:
            np.save(writer, np.asarray(array), allow_pickle=False)
        except ValueError as error:
            raise CacheStoreError(f"cache entry {name!r}, {path.name}: {error}") from error
        file.flush()
        os.fsync(file.fileno())
    return {"bytes": writer.size, "sha256": writer.sha256.hexdigest()}


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file, read in chunks (entries can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_file(path: Path, expected: Any) -> None:
    if not isinstance(expected, dict):
        raise CorruptEntryError(f"{path}: no size and checksum recorded", path)
    try:
        size = path.stat().st_size
        if size != expected.get("bytes"):
            raise CorruptEntryError(
                f"{path}: {size} bytes, expected {expected.get('bytes')} (truncated or altered)",
                path,
            )
        if file_sha256(path) != expected.get("sha256"):
            raise CorruptEntryError(f"{path}: sha256 does not match the recorded one", path)
    except OSError as error:
        raise CorruptEntryError(f"{path}: unreadable: {error}", path) from error


def _parse_meta(data: bytes, source: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        meta = json.loads(data)
    except ValueError as error:
        raise CorruptEntryError(f"{os.fspath(source)}: not valid JSON: {error}", source) from error
    if not isinstance(meta, dict):
        raise CorruptEntryError(f"{os.fspath(source)}: not a JSON object", source)
    return meta


def _meta_or_empty(data: bytes, source: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        return _parse_meta(data, source)
    except CorruptEntryError as error:
        logger.warning("%s", error)
        return {}


def _created(meta: Mapping[str, Any], mtime: float) -> str:
    created = meta.get("created")
    if isinstance(created, str) and created:
        return created
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(mtime))


def _newest_mtime(folder: Path) -> float:
    times = [folder.stat().st_mtime]
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            times.append(path.stat().st_mtime)
    return max(times)


def _checked_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CacheStoreError(
            f"cache entry name {name!r}: use letters, digits and ._@+=- (at most 200, "
            "not starting with a dot)"
        )
    return name


def _checked_file_name(filename: Any, meta_path: str | os.PathLike[str]) -> str:
    if not (
        isinstance(filename, str)
        and filename.endswith(".npy")
        and _ARRAY_NAME.fullmatch(filename[: -len(".npy")])
    ):
        raise CorruptEntryError(
            f"{os.fspath(meta_path)}: file name {filename!r} is not an array file", meta_path
        )
    return filename


def _display_uri(uri: str) -> str:
    """The URI without credentials or query options, for messages."""
    scheme, _, rest = uri.partition("://")
    rest = rest.split("?", 1)[0]
    authority, slash, path = rest.partition("/")
    authority = authority.rpartition("@")[2]
    return f"{scheme}://{authority}{slash}{path}"
