"""The benchmark runner: each benchmark in its own process."""

from __future__ import annotations

import pytest

from bench.run_all import BENCHMARKS, run_benchmark


def test_each_benchmark_runs_in_a_new_process(capfd: pytest.CaptureFixture[str]) -> None:
    # --help exits 0 from argparse in the child; this process never imports the module.
    assert run_benchmark("entry_sizes", ["--help"]) == 0
    assert "python -m bench.entry_sizes" in capfd.readouterr().out


def test_a_benchmark_that_rejects_its_flags_is_a_failure() -> None:
    assert run_benchmark("entry_sizes", ["--no-such-flag"]) == 2


def test_every_listed_benchmark_is_a_module() -> None:
    from importlib.util import find_spec

    assert all(find_spec(f"bench.{name}") is not None for name in BENCHMARKS)
