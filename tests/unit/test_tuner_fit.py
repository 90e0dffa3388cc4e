"""``tuning.tuner.fit``: what a search's results are made of."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tuning.tuner import fit


@dataclass
class _Result:
    config: dict[str, Any] | None
    metrics: dict[str, Any] = field(default_factory=dict)


class _Tuner:
    """Stands in for ``tune.Tuner``: ``fit`` returns an indexable grid of results."""

    def __init__(self, results: list[_Result]) -> None:
        self.results = results

    def fit(self) -> list[_Result]:
        return self.results


def test_a_trial_created_but_never_started_is_left_out_and_counted(caplog: Any) -> None:
    # Seen when time_budget_s ends a search: Tune keeps a trial with config None.
    ran = _Result({"dropout": 0.1}, {"val_accuracy": 0.5})
    with caplog.at_level("INFO", logger="tuning.tuner"):
        results, seconds = fit(_Tuner([ran, _Result(None)]))
    assert results == [ran] and seconds >= 0
    assert "1 trial(s) were created but never started" in caplog.text
