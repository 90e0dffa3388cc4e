"""``bottletune cache``: list, remove, plan and pre-build feature-cache entries.

``ls`` and ``rm`` read only ``meta.json`` files, so they never import
TensorFlow or Ray; ``plan`` and ``warm`` plan the cache as a search does, and
``warm`` builds what the plan stores.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from core.cache_store import CacheStoreError, EntryInfo, EntryStore

COLUMNS = ("key", "backbone", "cut", "view", "shape", "dtype", "size", "created")


def add_cache_parser(commands: Any) -> None:
    """Adds ``cache ls|rm|plan|warm`` to the subparsers of ``cli.main.build_parser``."""
    cache = commands.add_parser("cache", help="list, remove or pre-build cached features")
    actions = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")

    listing = actions.add_parser("ls", help="list cached entries")
    _add_location_options(listing)
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")

    remove = actions.add_parser("rm", help="remove cached entries")
    remove.add_argument("keys", nargs="*", metavar="KEY", help="entry names, as ls shows them")
    remove.add_argument(
        "--all", action="store_true", help="remove every entry (the build log is kept)"
    )
    _add_location_options(remove)

    plan = actions.add_parser(
        "plan",
        help="show what a search would cache, its bytes and extraction time, before any work",
    )
    plan.add_argument("--data", required=True, help="dataset directory")
    _add_location_options(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument(
        "--no-probe", action="store_true", help="skip the timed probe (no time estimates)"
    )

    warm = actions.add_parser("warm", help="build every entry a search would need")
    warm.add_argument("--data", required=True, help="dataset directory")
    _add_location_options(warm)
    warm.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_location_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir", help="cache directory or URI (default: the config's cache_dir)"
    )
    parser.add_argument("--mirror-dir", help="local mirror of a remote cache")
    parser.add_argument("--config", help="YAML config file or preset name")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def run_cache_command(args: argparse.Namespace) -> int:
    """Runs ``bottletune cache <action>``; returns the exit status.

    Raises:
        ValueError: for anything the user can fix (unknown entry, bad config);
            ``cli.main`` prints it as one line and exits with status 2.
    """
    if args.cache_command == "warm":
        return warm(args)
    if args.cache_command == "plan":
        return show_plan(args)
    store = open_store(args)
    if args.cache_command == "ls":
        return list_entries(store, as_json=args.json)
    return remove_entries(store, args.keys, remove_all=args.all)


def open_store(args: argparse.Namespace) -> EntryStore:
    """The store named by ``--cache-dir``, else by the config's ``cache_dir``."""
    location = args.cache_dir
    if location is None:
        from tuning.config import load_config, parse_overrides

        config = load_config(args.config, parse_overrides(args.overrides))
        location = config.extraction.cache_dir
    return EntryStore(location, mirror_dir=args.mirror_dir)


def list_entries(store: EntryStore, *, as_json: bool = False) -> int:
    """Prints every entry as a table (or a JSON list) and returns 0."""
    entries = store.entries()
    rows = [describe(entry) for entry in entries]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no cached entries in {store.location}")
        return 0
    columns = COLUMNS + (("where",) if store.is_remote else ())
    cells = [[_cell(row, column) for column in columns] for row in rows]
    widths = [max(len(column), *(len(row[i]) for row in cells)) for i, column in enumerate(columns)]
    for line in [list(columns), *cells]:
        print(
            "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        )
    total = sum(entry.total_bytes for entry in entries)
    print(f"{len(rows)} entries, {human_size(total)} in {store.location}")
    return 0


def remove_entries(store: EntryStore, keys: Sequence[str], *, remove_all: bool) -> int:
    """Removes the named entries (or all of them) and returns 0.

    Every name is checked before anything is removed.

    Raises:
        CacheStoreError: naming the first key that is not an entry.
    """
    if remove_all == bool(keys):
        raise CacheStoreError("cache rm: name entries to remove, or pass --all (not both)")
    present = {entry.name for entry in store.entries()}
    names = sorted(present) if remove_all else list(dict.fromkeys(keys))
    for name in names:
        if name not in present:
            raise CacheStoreError(
                f"no cache entry named {name!r} in {store.location} (see bottletune cache ls)"
            )
    for name in names:
        store.remove(name)
        print(f"removed {name}")
    if remove_all:
        print(f"removed {len(names)} entries from {store.location}")
    return 0


def _planned(args: argparse.Namespace, *, probe: bool) -> tuple[Any, Any, Any]:
    """The config, the scanned data and the cache plan a local search would start with."""
    from core.data import scan_dataset
    from core.plan import default_object_store_bytes, plan_for
    from search_spaces import load_space
    from tuning.config import load_config, parse_overrides

    config = load_config(args.config, parse_overrides(args.overrides))
    if args.cache_dir is not None:
        config = config.replace(cache_dir=args.cache_dir)
    index = scan_dataset(args.data, config.features.validation_fraction, config.seed)
    plan = plan_for(
        config.feature_request(load_space(config.searcher.space)),
        index,
        budget=config.features.cache_memory_budget,
        cache_location=config.cache_location,
        object_store_bytes=default_object_store_bytes(config.local_ray.object_store_memory),
        probe=probe,
        mirror_dir=args.mirror_dir,
        fresh_cost_limit=config.features.fresh_cost_limit,
    )
    return config, index, plan


def show_plan(args: argparse.Namespace) -> int:
    """Prints the cache plan of a local search with this config (as text or JSON); returns 0.

    The object store is the one a local search would start: the config's
    ``object_store_memory``, else Ray's default share of this machine's memory.
    """
    _, _, plan = _planned(args, probe=not args.no_probe)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else "\n".join(plan.lines()))
    return 0


def warm(args: argparse.Namespace) -> int:
    """Builds every entry the cache plan of a search with this config stores; returns 0."""
    from core.features import FeatureCache
    from search_spaces import load_space

    config, index, plan = _planned(args, probe=False)
    cache = FeatureCache(config.cache_location, mirror_dir=args.mirror_dir)
    cache.ensure(
        index,
        plan.request(config.feature_request(load_space(config.searcher.space))),
        progress=not args.quiet,
    )
    for name in cache.stats.misses:
        print(f"built   {name}")
    for name in cache.stats.hits:
        print(f"cached  {name}")
    print(
        f"{len(cache.stats.misses)} built, {len(cache.stats.hits)} already cached in "
        f"{config.extraction.cache_dir}"
    )
    return 0


def describe(entry: EntryInfo) -> dict[str, Any]:
    """One entry's row, read defensively from its meta (older entries lack fields)."""
    meta = entry.meta
    key = _mapping(meta.get("key"))
    shapes = _mapping(meta.get("shapes"))
    view = key.get("view", key.get("view_seed"))
    return {
        "key": entry.name,
        "backbone": key.get("backbone"),
        "cut": key.get("cut"),
        "augmentation": key.get("augmentation"),
        "view": view,
        "shape": shapes.get("train"),
        "dtype": meta.get("dtype", key.get("dtype")),
        "bytes": entry.total_bytes,
        "created": entry.created,
        "local": entry.local,
        "remote": entry.remote,
        "meta": meta,
    }


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _cell(row: dict[str, Any], column: str) -> str:
    if column == "view":
        if row["view"] is None:
            return "-"
        strength = row["augmentation"]
        prefix = f"aug{strength:g} " if isinstance(strength, (int, float)) else ""
        return f"{prefix}view {row['view']}"
    if column == "shape":
        shape = row["shape"]
        return "x".join(str(n) for n in shape) if isinstance(shape, list) else "-"
    if column == "size":
        return human_size(row["bytes"])
    if column == "where":
        return "+".join(place for place in ("local", "remote") if row[place])
    value = row[column]
    return "-" if value is None else str(value)


def human_size(count: int) -> str:
    """Bytes as ``512 B``, ``1.5 KiB``, ``20.0 MiB``..."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
