"""Runs the benchmarks: ``python -m bench.run_all [--only NAME ...] [--skip NAME ...]``.

Each benchmark is a module of this package with a ``main(argv) -> int`` that
prints its table, writes ``bench/results/NAME.json`` and rewrites its own
section of ``docs/benchmarks.md``. Each runs in a new Python process
(``python -m bench.NAME``): TensorFlow fixes its thread pools at its first
op, for the life of the process, and every benchmark sets its own. Extra
arguments after ``--`` go to every selected benchmark, e.g.
``python -m bench.run_all --only cache_vs_naive -- --size 150 --per-class 1000``
(the benchmarks' flags differ, so pass them with ``--only``). ``--recipe-scale``
runs each benchmark at the write-up's scale (150 px, 2000 training and 800
validation images) with its own flags: hours on 2 CPU cores, meant for a GPU node.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time

from bench.common import RESULTS_DIR, load_average, setup_logging

logger = logging.getLogger(__name__)

BENCHMARKS: tuple[str, ...] = (
    "entry_sizes",
    "cache_vs_naive",
    "extraction",
    "memory",
    "dtype",
    "search",
    "startup",
    "augmentation",
)
"""Modules of ``bench`` run by ``main``, in order."""

RECIPE_SCALE: dict[str, list[str]] = {
    "entry_sizes": ["--size", "150", "--train", "2000", "--validation", "800"],
    "cache_vs_naive": ["--size", "150", "--per-class", "1000"],
    "extraction": ["--size", "150", "--per-class", "1000"],
    "memory": ["--size", "150", "--train", "2000", "--validation", "800"],
    "dtype": ["--size", "150", "--classes", "2", "--per-class", "1000"],
    "search": [
        "--size",
        "150",
        "--classes",
        "2",
        "--per-class",
        "1000",
        "--samples",
        "16",
        "--epochs",
        "10",
    ],  # fmt: skip
    "startup": ["--size", "150", "--per-class", "1000", "--samples", "16", "--epochs", "10"],
    # Few training images is the point (data where augmentation helps); the size is the recipe's.
    "augmentation": ["--size", "150", "--classes", "2", "--validation-per-class", "400"],
}
"""Each benchmark's flags for the write-up's setup (``--recipe-scale``)."""


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__)
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    parser.add_argument("--skip", nargs="+", choices=BENCHMARKS, default=[], help="skip these")
    parser.add_argument("--no-doc", action="store_true", help="leave docs/benchmarks.md unchanged")
    parser.add_argument(
        "--recipe-scale",
        action="store_true",
        help="150 px, 2000 training + 800 validation images (for a GPU node)",
    )
    return parser.parse_args(argv), extra


def run_benchmark(name: str, arguments: list[str]) -> int:
    """Runs ``python -m bench.NAME ARGUMENTS`` in a new process; returns its exit code."""
    return subprocess.run([sys.executable, "-m", f"bench.{name}", *arguments]).returncode


def main(argv: list[str] | None = None) -> int:
    """Runs the selected benchmarks with their defaults (plus any arguments after ``--``).

    Returns:
        0 when every benchmark succeeded, 1 otherwise (the others still run).
    """
    args, extra = parse_args(argv)
    setup_logging()
    from cluster import prefer_loopback

    prefer_loopback()  # every local Ray the benchmarks start stays on 127.0.0.1
    selected = [b for b in (args.only or BENCHMARKS) if b not in args.skip]
    if args.no_doc:
        extra = [*extra, "--no-doc"]
    failed: list[str] = []
    summary: dict[str, dict[str, object]] = {}
    started_all = time.perf_counter()
    for name in selected:
        started = time.perf_counter()
        load = load_average()
        logger.info("== bench.%s (load average %s)", name, load)
        arguments = [*(RECIPE_SCALE[name] if args.recipe_scale else []), *extra]
        code = run_benchmark(name, arguments)
        if code:
            logger.error("benchmark %s exited %s (arguments %s)", name, code, arguments)
        seconds = time.perf_counter() - started
        summary[name] = {"exit": code, "seconds": round(seconds, 1), "load_average_before": load}
        logger.info("== bench.%s finished in %.1f s (exit %s)", name, seconds, code)
        if code:
            failed.append(name)
    summary["total"] = {"seconds": round(time.perf_counter() - started_all, 1)}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "run_all.json").write_text(json.dumps(summary, indent=2) + "\n")
    if failed:
        logger.error("failed benchmarks: %s", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
