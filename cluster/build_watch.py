"""Ends a search whose feature builder failed, rather than let every trial fail in turn.

Trials start while the builder still builds what they read
(``cluster.extraction``); when one of its calls fails, every trial that reads
those entries would fail, be retried and fail again. Tune asks this stopper
after every step whether to stop the whole experiment; ``tuning.search`` then
raises the builder's error.
"""

from __future__ import annotations

from typing import Any

from ray.tune import Stopper

from cluster.extraction import FeatureBuild


class StopWhenBuildFails(Stopper):
    """Stops every trial once one of the builder's calls has failed (never waits for one)."""

    def __init__(self, build: FeatureBuild | None) -> None:
        self.build = build
        self.error: BaseException | None = None

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        if self.error is None and self.build is not None:
            self.error = self.build.failure()
        return self.error is not None

    def __getstate__(self) -> dict[str, Any]:
        # Tune saves its run config with the experiment; the builder's object
        # references belong to this driver alone, and a resumed search builds anew.
        return {"build": None, "error": None}
