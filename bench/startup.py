"""Trial start-up with Ray Tune's ``reuse_actors`` on and off (issue 9, item 4).

Two real searches of the same data, space, seed and trial resources, one
after the other, each on a fresh local Ray (``tuning.search.run_search``):

reuse
    ``reuse_actors=True`` (the default): a trial starts in the process of a
    finished one when one is free, with TensorFlow imported and configured.
new-process
    ``reuse_actors=False``: every trial starts a Ray worker process of its
    own, which imports TensorFlow again.

The space mixes head-only trials and trials that fine-tune VGG16's top block.
Every number comes from the trials' own first report, read back from Ray
Tune's ``result.json``: the seconds of each start-up step
(``tuning.trainable.STARTUP_STEPS``), which trial of its process it was
(``process_trial``), the process's resident memory when it started
(``rss_mb``) and, for a later trial in a process, how long the trial before it
took to free its models (``previous_close_s``). A trial's time is Ray's
``time_total_s`` at its last report.

The first ``--concurrent`` trials to start are the node's first: in either
mode they start new processes. The target concerns the others, from the
second trial on the node: their median start-up must be under 1 s or under 5%
of the median trial's time, whichever is larger.

A third search (``--rss-trials``, one trial at a time, every trial fine-tuning)
runs its trials in one reused process and lists that process's resident
memory at the start of each trial: flat when every trial frees its models
(``core.training.RecipeTrainer.close``).

The defaults (48 px, 2 classes of 16 training images, 12 trials of up to 3
epochs, 2 at a time, and 20 trials in one process) took about 7 minutes on a
shared 2-core machine (load average 2-5): 80 s with reuse, 180 s without, 140 s
for the memory run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import common
from bench.common import (
    BACKBONE,
    RESULTS_DIR,
    SEED,
    WEIGHTS,
    add_output_flags,
    load_average,
    machine_info,
    machine_line,
    markdown_table,
    non_negative_int,
    positive_int,
    setup_logging,
    text_table,
    update_doc_section,
    write_results,
)
from bench.peers import reported_epochs
from tuning.trainable import STARTUP_STEPS

logger = logging.getLogger(__name__)

REUSE, NEW_PROCESS = "reuse", "new-process"
TARGET_SECONDS = 1.0
TARGET_SHARE = 0.05
"""From the second trial on a node: start-up under 1 s or 5% of the median trial, the larger."""

SPACE = """
unfreeze_blocks: {type: int, low: 0, high: 1}
dropout: {type: float, low: 0.0, high: 0.5}
head_learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
finetune_learning_rate:
  {type: float, low: 1.0e-5, high: 1.0e-3, log: true, when: "unfreeze_blocks > 0"}
augmentation: 0.0
dense_units: 16
batch_size: 8
"""
"""Head-only trials and trials that fine-tune the top block, on plain cached features."""
FINETUNE_SPACE = SPACE.replace("{type: int, low: 0, high: 1}", "1")
"""The memory run's: every trial fine-tunes, the trials that built the most."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.startup",
        description="Trial start-up with Ray Tune's reuse_actors on and off.",
    )
    parser.add_argument("--size", type=positive_int, default=48, help="image side in px")
    parser.add_argument("--classes", type=positive_int, default=2, help="classes of shapes")
    parser.add_argument(
        "--per-class", type=positive_int, default=16, help="training images per class"
    )
    parser.add_argument("--samples", type=positive_int, default=12, help="trials per search")
    parser.add_argument("--epochs", type=positive_int, default=3, help="max_epochs (ASHA max_t)")
    parser.add_argument("--head-epochs", type=positive_int, default=1, help="phase-1 epochs")
    parser.add_argument("--grace-period", type=positive_int, default=1, help="ASHA's grace")
    parser.add_argument("--cpus", type=positive_int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--concurrent", type=positive_int, default=2, help="max concurrent trials")
    parser.add_argument(
        "--rss-trials",
        type=non_negative_int,
        default=20,
        help="trials of the memory run, one at a time in one process (0: no memory run)",
    )
    add_output_flags(parser, "startup")
    args = parser.parse_args(argv)
    if args.classes < 2:
        parser.error(f"--classes {args.classes}: must be at least 2")
    if args.per_class < 4:
        parser.error(f"--per-class {args.per_class}: must be at least 4")
    if args.grace_period > args.epochs:
        parser.error(f"--grace-period {args.grace_period}: must be at most --epochs {args.epochs}")
    if args.concurrent > args.samples:
        parser.error(f"--concurrent {args.concurrent}: must be at most --samples {args.samples}")
    return args


REPRODUCED_FLAGS = (
    "size",
    "classes",
    "per_class",
    "samples",
    "epochs",
    "head_epochs",
    "grace_period",
    "cpus",
    "concurrent",
    "rss_trials",
)
"""Every flag that changes what is measured, in the order the command prints them."""


def command_line(args: argparse.Namespace) -> str:
    """The command that reruns this benchmark with every setting spelled out."""
    return common.command_line(
        "bench.startup", args, REPRODUCED_FLAGS, RESULTS_DIR / "startup.json"
    )


# What the trials reported (pure: works on result.json rows)


def trial_record(trial_id: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """One trial's start-up, process and time, from its reports (None: it never reported).

    ``started`` orders trials by when their trainable began: the first
    report's wall time (whole seconds) less the time it took to get there.
    """
    if not rows:
        return None
    first, last = rows[0], rows[-1]
    startup = {step: float(first.get(f"startup_{step}_s", 0.0)) for step in STARTUP_STEPS}
    total = float(first.get("startup_total_s", sum(startup.values())))
    return {
        "trial": trial_id,
        "pid": first.get("pid"),
        "process_trial": int(first.get("process_trial", 0)),
        "unfreeze_blocks": first.get("config", {}).get("unfreeze_blocks"),
        "startup": startup,
        "startup_total_s": total,
        "previous_close_s": first.get("previous_close_s"),
        "rss_mb": first.get("rss_mb"),
        "epochs": int(last.get("training_iteration", 0)),
        "trial_seconds": float(last.get("time_total_s", 0.0)),
        "started": float(first["timestamp"]) - float(first.get("time_total_s", 0.0)) - total,
    }


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize_side(records: Sequence[Mapping[str, Any]], concurrent: int) -> dict[str, Any]:
    """Per-step medians for the node's first trials and for the later ones, and the target.

    Args:
        records: ``trial_record`` of every trial of one search.
        concurrent: How many trials ran at once: the first that many to start
            are the node's first trials.
    """
    ordered = sorted(records, key=lambda record: (record["started"], record["process_trial"]))
    groups = {"first": list(ordered[:concurrent]), "later": list(ordered[concurrent:])}
    median_trial = median([record["trial_seconds"] for record in ordered])
    threshold = max(TARGET_SECONDS, TARGET_SHARE * median_trial) if median_trial else None
    summary: dict[str, Any] = {
        "trials": len(ordered),
        "processes": len({record["pid"] for record in ordered}),
        "median_trial_s": median_trial,
        "target_s": threshold,
        "groups": {},
    }
    for name, group in groups.items():
        closes = [r["previous_close_s"] for r in group if r["previous_close_s"] is not None]
        totals = [record["startup_total_s"] for record in group]
        summary["groups"][name] = {
            "trials": len(group),
            "in_reused_process": sum(1 for record in group if record["process_trial"] > 1),
            "median_step_s": {
                step: median([record["startup"][step] for record in group])
                for step in STARTUP_STEPS
            },
            "median_total_s": median(totals),
            "max_total_s": max(totals, default=None),
            "median_previous_close_s": median(closes),
        }
    later = summary["groups"]["later"]["median_total_s"]
    summary["target_met"] = None if later is None or threshold is None else later < threshold
    return summary


def summarize_memory(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Resident memory at the start of each trial of one process, in the order they ran.

    ``growth_mb`` is from the fourth trial on (the first ones load kernels and
    allocator pools once), as tests/unit/test_trainable_startup.py bounds it: the
    highest later value over the fourth's, so one low fourth reading inflates it.
    ``median_growth_mb`` compares medians instead: of the last five readings over
    the fourth to eighth, which a steady leak moves and a single reading does not.
    """
    ordered = sorted(records, key=lambda record: record["process_trial"])
    rss = [float(record["rss_mb"]) for record in ordered if record["rss_mb"] is not None]
    return {
        "trials": len(ordered),
        "processes": len({record["pid"] for record in ordered}),
        "rss_mb": rss,
        "growth_mb": max(rss[3:]) - rss[3] if len(rss) > 3 else None,
        "median_growth_mb": (
            statistics.median(rss[-5:]) - statistics.median(rss[3:8]) if len(rss) >= 10 else None
        ),
    }


# The searches


@contextlib.contextmanager
def actors_reused(reuse: bool) -> Iterator[None]:
    """``run_search`` with Ray Tune's ``reuse_actors`` as given.

    It is ``new_tuner``'s argument, not a search setting, so the benchmark
    hands ``run_search`` a ``new_tuner`` with it bound, for the one search.
    """
    import tuning.search

    original = tuning.search.new_tuner
    tuning.search.new_tuner = functools.partial(original, reuse_actors=reuse)
    try:
        yield
    finally:
        tuning.search.new_tuner = original


def search_config(args: argparse.Namespace, space: Path, cache_dir: Path, **overrides: Any) -> Any:
    from tuning.config import load_config

    values: dict[str, Any] = {
        "backbone": BACKBONE,
        "weights": WEIGHTS,
        "image_size": args.size,
        "num_samples": args.samples,
        "max_epochs": args.epochs,
        "head_epochs": args.head_epochs,
        "grace_period": args.grace_period,
        "seed": SEED,
        "max_concurrent_trials": args.concurrent,
        "cpus_per_trial": 1,
        "cache_dir": str(cache_dir),
        "space": str(space),
        "include_dashboard": False,
    }
    values.update(overrides)
    return load_config(overrides=values)


def run_one(
    name: str, config: Any, data_dir: Path, run_dir: Path, cpus: int, *, reuse: bool
) -> tuple[list[dict[str, Any]], float]:
    """One search; every trial's ``trial_record`` and the search's wall seconds."""
    from tuning.search import run_search

    logger.info("%s search (reuse_actors=%s)...", name, reuse)
    started = time.perf_counter()
    with actors_reused(reuse):
        result = run_search(config, data_dir, run_dir, num_cpus=cpus, progress=False)
    seconds = time.perf_counter() - started
    records = [
        trial_record(trial.trial_id, reported_epochs(Path(trial.path))) for trial in result.trials
    ]
    return [record for record in records if record is not None], seconds


def run_all(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from core.demo_data import make_demo_data

    data_dir = root / "data"
    make_demo_data(data_dir, classes=args.classes, per_class=args.per_class, size=args.size)
    (root / "space.yaml").write_text(SPACE)
    (root / "finetune.yaml").write_text(FINETUNE_SPACE)
    # One cache for all: the first search extracts, the others find it warm.
    config = search_config(args, root / "space.yaml", root / "cache")
    sides: dict[str, Any] = {}
    for name, reuse in ((REUSE, True), (NEW_PROCESS, False)):
        records, seconds = run_one(name, config, data_dir, root / name, args.cpus, reuse=reuse)
        sides[name] = {
            "reuse_actors": reuse,
            "search_seconds": seconds,
            "summary": summarize_side(records, args.concurrent),
            "trials": records,
        }
    memory: dict[str, Any] | None = None
    if args.rss_trials:
        memory_config = search_config(
            args,
            root / "finetune.yaml",
            root / "cache",
            num_samples=args.rss_trials,
            max_concurrent_trials=1,
        )
        records, seconds = run_one(
            "memory", memory_config, data_dir, root / "memory", args.cpus, reuse=True
        )
        memory = {
            "search_seconds": seconds,
            "summary": summarize_memory(records),
            "trials": records,
        }
    return {"sides": sides, "memory": memory}


# Tables


def seconds_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def startup_rows(sides: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for name, side in sides.items():
        summary = side["summary"]
        for group_name, label in (("first", "node's first"), ("later", "later")):
            group = summary["groups"][group_name]
            rows.append(
                [
                    name,
                    label,
                    str(group["trials"]),
                    str(group["in_reused_process"]),
                    *(seconds_text(group["median_step_s"][step]) for step in STARTUP_STEPS),
                    seconds_text(group["median_total_s"]),
                    seconds_text(group["max_total_s"]),
                    seconds_text(group["median_previous_close_s"]),
                ]
            )
    return rows


def verdict_rows(sides: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for name, side in sides.items():
        summary = side["summary"]
        met = summary["target_met"]
        rows.append(
            [
                name,
                f"{side['search_seconds']:.0f}",
                str(summary["processes"]),
                seconds_text(summary["median_trial_s"]),
                seconds_text(summary["groups"]["later"]["median_total_s"]),
                seconds_text(summary["target_s"]),
                "not measured" if met is None else ("met" if met else "not met"),
            ]
        )
    return rows


VERDICT_HEADER = (
    "search", "wall s", "processes", "median trial s", "later start-up s", "target s", "target",
)  # fmt: skip


def render(
    args: argparse.Namespace, results: Mapping[str, Any], machine: dict[str, Any], *, markdown: bool
) -> str:
    table = markdown_table if markdown else text_table
    step_header = [f"{step} s" for step in STARTUP_STEPS]
    parts = [
        f"Trial start-up, reuse_actors on and off: {args.samples} trials of up to {args.epochs} "
        f"epochs, {args.concurrent} at a time, {args.size} px, {BACKBONE} weights={WEIGHTS}, "
        f"{args.classes} classes x {args.per_class} training images; {machine_line(machine)}. "
        "Medians over trials of each trial's start-up steps (its first report).",
        table(
            [
                "search",
                "group",
                "trials",
                "reused",
                *step_header,
                "total s",
                "max s",
                "prev. close s",
            ],
            startup_rows(results["sides"]),
        ),
        "Target, from the second trial on the node: median start-up under "
        f"{TARGET_SECONDS:g} s or {TARGET_SHARE:.0%} of the median trial, whichever is larger.",
        table(VERDICT_HEADER, verdict_rows(results["sides"])),
    ]
    if results.get("memory"):
        memory = results["memory"]["summary"]
        growth, median = memory["growth_mb"], memory.get("median_growth_mb")
        parts.append(
            f"Memory: {memory['trials']} fine-tuning trials one at a time in "
            f"{memory['processes']} process(es); resident MB at each trial's start: "
            + ", ".join(f"{value:.0f}" for value in memory["rss_mb"])
            + (
                f" (from the fourth trial on: at most +{growth:.0f} MB over the fourth"
                + (
                    f"; median of the last five over the fourth to eighth: {median:+.0f} MB)."
                    if median is not None
                    else ")."
                )
                if growth is not None
                else "."
            )
        )
    command = command_line(args)
    parts.append(f"Reproduce: `{command}`" if markdown else f"Reproduce: {command}")
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from cluster import prefer_loopback

    prefer_loopback()  # before anything imports ray, as the CLI does
    machine = machine_info(tensorflow=False)
    with tempfile.TemporaryDirectory(prefix="bottletune-bench-startup-") as scratch:
        results = run_all(args, Path(scratch))
    print()
    print(render(args, results, machine, markdown=False).replace("`", ""))
    print()
    write_results(
        args.out,
        {
            "benchmark": "startup",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": command_line(args),
            "settings": {k: v for k, v in vars(args).items() if k != "out"},
            "machine": {**machine, "load_average_after": load_average()},
            **results,
        },
    )
    if not args.no_doc:
        update_doc_section("startup", render(args, results, machine, markdown=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
