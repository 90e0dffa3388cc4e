"""The start-up benchmark's memory summary, on made-up readings."""

from __future__ import annotations

import pytest

from bench.startup import summarize_memory


def records(rss: list[float]) -> list[dict[str, object]]:
    # Out of order on purpose: the summary sorts by each process's trial count.
    rows = [{"process_trial": i + 1, "pid": 7, "rss_mb": mb} for i, mb in enumerate(rss)]
    return rows[::-1]


def test_a_steady_leak_shows_in_both_figures() -> None:
    summary = summarize_memory(records([900, 950, 990] + [1000 + 5 * i for i in range(17)]))
    assert summary["trials"] == 20 and summary["processes"] == 1
    assert summary["growth_mb"] == pytest.approx(80)
    # Medians of trials 16-20 and 4-8: 1070 and 1010.
    assert summary["median_growth_mb"] == pytest.approx(60)


def test_one_low_fourth_reading_inflates_growth_but_not_the_medians() -> None:
    flat = [900, 950, 990, 900] + [1000] * 16
    summary = summarize_memory(records(flat))
    assert summary["growth_mb"] == pytest.approx(100)
    assert summary["median_growth_mb"] == pytest.approx(0)


def test_too_few_trials_give_no_figures() -> None:
    summary = summarize_memory(records([900, 950, 990]))
    assert summary["growth_mb"] is None and summary["median_growth_mb"] is None
