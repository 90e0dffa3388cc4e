"""Exporting the best trial's configuration of a finished search (``bottletune export``)."""

from __future__ import annotations

import os
from pathlib import Path

from core.plan import CachePlan
from tuning.run_dir import EXPORT_VERSION as EXPORT_VERSION
from tuning.run_dir import PLAN_FILE, RESULTS_FILE, BestConfig, RunDirError, SearchSummary

__all__ = ["EXPORT_VERSION", "BestConfig", "ExportError", "best_config", "export_best"]

ExportError = RunDirError
"""A run directory or an exported config is missing, unreadable or inconsistent."""


def best_config(run_dir: str | os.PathLike[str]) -> BestConfig:
    """The best trial of a finished search, from ``run_dir/results.json`` and its cache plan."""
    summary = SearchSummary.read(run_dir)
    plan_file = Path(run_dir) / PLAN_FILE
    plan = CachePlan.read(plan_file) if plan_file.is_file() else None  # older runs have none
    return BestConfig.from_summary(summary, str(Path(run_dir) / RESULTS_FILE), plan)


def export_best(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, force: bool = False
) -> BestConfig:
    """Writes the best trial's config to ``out`` as JSON (never over a file unless forced)."""
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    config = best_config(run_dir)
    config.write(out)
    return config
