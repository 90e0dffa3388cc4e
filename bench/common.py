"""What the benchmarks share: machine facts, JSON results, the tables in docs/benchmarks.md."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DOC_PATH = REPO / "docs" / "benchmarks.md"
IMG_DIR = REPO / "docs" / "img"
BACKBONE = "vgg16"
WEIGHTS = "none"
"""Random init: nothing to download, and compute does not depend on the weights' values."""
SEED = 0


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= 1")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= 0")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number >= 0")
    return value


def add_output_flags(parser: argparse.ArgumentParser, name: str) -> None:
    """``--out`` (JSON path) and ``--no-doc`` (leave docs/benchmarks.md alone)."""
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR / f"{name}.json", help="JSON results path"
    )
    parser.add_argument(
        "--no-doc", action="store_true", help="do not rewrite this table in docs/benchmarks.md"
    )


def command_line(
    module: str, args: argparse.Namespace, flags: Sequence[str], default_out: Path
) -> str:
    """The command that reruns a benchmark with every setting in ``flags`` spelled out.

    Unset (None) flags are left out, and so are ``--out`` at its default and ``--no-doc``
    when off.
    """
    words = ["python", "-m", module]
    for name in flags:
        value = getattr(args, name)
        if value is not None:
            words += [f"--{name.replace('_', '-')}", str(value)]
    if Path(args.out).absolute() != default_out.absolute():
        words += ["--out", str(args.out)]
    if args.no_doc:
        words.append("--no-doc")
    return " ".join(words)


def load_average() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine_info(*, tensorflow: bool = True) -> dict[str, Any]:
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpus_available": len(affinity) if affinity is not None else None,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "load_average": load_average(),
    }
    if tensorflow:
        import keras
        import tensorflow as tf

        info.update(
            tensorflow=tf.__version__,
            keras=keras.__version__,
            gpus=len(tf.config.list_physical_devices("GPU")),
        )
    return info


def machine_line(info: dict[str, Any]) -> str:
    """One line for the docs: when, where and how loaded."""
    gpus = info.get("gpus")
    device = f"{gpus} GPU" if gpus else "no GPU"
    load = info.get("load_average_before") or info.get("load_average")
    load_text = f", load average {load[0]:.1f} at start" if load else ""
    return (
        f"{info.get('cpus_available') or info.get('cpu_count')} cores, {device}{load_text}, "
        f"{time.strftime('%Y-%m-%d')}"
    )


def write_results(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    logger.info("wrote %s", path)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The same table for the terminal, right-aligned columns."""
    cells = [list(header), *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    rendered = [" | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([rendered[0], rule, *rendered[1:]])


def update_doc_section(name: str, body: str, path: Path = DOC_PATH) -> None:
    """Replaces the text between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``.

    A section the doc lacks is appended, so a new benchmark needs no hand edit;
    everything outside the markers (the hand-written explanation) is kept.
    """
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    logger.info("updated section %s of %s", name, path)


def mb(nbytes: float) -> str:
    """Bytes as MB (10^6) or GB, for tables."""
    if abs(nbytes) >= 1e9:
        return f"{nbytes / 1e9:.2f} GB"
    if abs(nbytes) >= 1e6:
        return f"{nbytes / 1e6:.1f} MB"
    return f"{nbytes / 1e3:.1f} KB"


def setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")


def extraction_record(cache_dir: Path) -> dict[str, Any]:
    """What the cache recorded building: the plain pass and each view pass, in seconds.

    Every entry of one forward pass records that pass's time, so each pass is counted once.
    """
    from core.features import FeatureCache

    builds = FeatureCache(cache_dir).builds()
    passes = {(build["augmentation"], build["view"]): float(build["seconds"]) for build in builds}
    plain = sum(seconds for (_, view), seconds in passes.items() if view is None)
    views = sum(seconds for (_, view), seconds in passes.items() if view is not None)
    return {
        "seconds": plain + views,
        "plain_pass_seconds": plain,
        "view_passes": sum(1 for _, view in passes if view is not None),
        "view_passes_seconds": views,
        "entries_built": len(builds),
    }
