"""The console view of a training run: one Keras-style line per epoch, a bar on a terminal.

A user-facing display, not logging: it writes to the stream it is given
(standard output by default). On a terminal a long epoch also shows a bar that
the epoch's line then overwrites; anywhere else (a file, a CI log, a test) only
the finished lines are written, so logs stay free of carriage returns.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

PHASE_NAMES = {1: "head", 2: "fine-tuning"}
"""What each of the recipe's phases trains, as the epoch line names it."""

METRIC_ORDER = ("loss", "accuracy", "val_loss", "val_accuracy")
"""Metrics in the order Keras prints them; any others follow in their own order."""

NOT_METRICS = frozenset({"epoch", "phase", "epoch_seconds"})

BAR_WIDTH = 30
BAR_DELAY_SECONDS = 1.0
"""An epoch shorter than this never draws a bar: it would only flicker."""

BAR_INTERVAL_SECONDS = 0.1
"""Shortest time between two redraws of the bar."""

CLEAR_LINE = "\r\x1b[K"


def format_seconds(seconds: float) -> str:
    """Elapsed time the way the epoch line shows it: ``2.1s``, ``95.0s``, ``2m05s``."""
    if seconds < 100:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}m{rest:02d}s"


def epoch_title(epoch: int, epochs: int, phase: int | None = None) -> str:
    """``Epoch 3/10 (phase 2: fine-tuning)``, for a 1-based epoch."""
    title = f"Epoch {epoch}/{epochs}"
    if phase is None:
        return title
    name = PHASE_NAMES.get(phase)
    return f"{title} (phase {phase}: {name})" if name else f"{title} (phase {phase})"


def format_epoch(metrics: Mapping[str, Any], epochs: int) -> str:
    """One finished epoch as a line, e.g.

    ``Epoch 3/10 (phase 2: fine-tuning) - 2.1s - loss: 0.4123 - accuracy: 0.8100 -
    val_loss: 0.3900 - val_accuracy: 0.8300`` (on one line).

    Args:
        metrics: What ``RecipeTrainer.train_epoch`` returns: epoch (1-based),
            phase, epoch_seconds and the metrics. Only ``epoch`` is required.
        epochs: The epochs the whole run trains.
    """
    parts = [epoch_title(int(metrics["epoch"]), epochs, metrics.get("phase"))]
    if "epoch_seconds" in metrics:
        parts.append(format_seconds(float(metrics["epoch_seconds"])))
    known = [name for name in METRIC_ORDER if name in metrics]
    others = [name for name in metrics if name not in NOT_METRICS and name not in METRIC_ORDER]
    for name in known + others:
        value = metrics[name]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{name}: {value:.4f}")
    return " - ".join(parts)


def format_bar(done: int, total: int, elapsed: float, width: int = BAR_WIDTH) -> str:
    """``12/40 [=========>....................] - 1.2s - ETA 2.8s`` after ``done`` batches."""
    filled = width * done // total if total else width
    arrow = ">" if 0 < done < total else ""
    bar = ("=" * filled + arrow)[:width].ljust(width, ".")
    text = f"{done:>{len(str(total))}}/{total} [{bar}] - {format_seconds(elapsed)}"
    if 0 < done < total:
        return f"{text} - ETA {format_seconds(elapsed / done * (total - done))}"
    return f"{text} - validating" if done >= total else text


class EpochPrinter:
    """Writes one line per epoch and, on a terminal, a bar while a long epoch trains.

    Use ``start_epoch`` before each epoch and hand what it returns to
    ``RecipeTrainer.train_epoch(on_batch=...)``, then ``end_epoch`` with the
    epoch's metrics.

    Args:
        epochs: The epochs the whole run trains.
        stream: Where to write (default: standard output, looked up when used).
        bar: Draw the bar; None draws it only when ``stream`` is a terminal.
        clock: Seconds since some fixed point (tests pass a fake one).
    """

    def __init__(
        self,
        epochs: int,
        *,
        stream: TextIO | None = None,
        bar: bool | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.epochs = epochs
        self._stream = stream
        self._bar = bar
        self._clock = clock
        self._title = ""
        self._total = 0
        self._started = 0.0
        self._drawn_at: float | None = None

    @property
    def stream(self) -> TextIO:
        return sys.stdout if self._stream is None else self._stream

    @property
    def draws_bar(self) -> bool:
        if self._bar is not None:
            return self._bar
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def start_epoch(
        self, epoch: int, *, phase: int | None = None, batches: int | None = None
    ) -> Callable[[int], None] | None:
        """Starts the clock of one epoch.

        Args:
            epoch: The epoch about to train, 1-based.
            phase: Its phase (1 or 2), shown beside the bar.
            batches: Training batches in the epoch; without it there is no bar.

        Returns:
            The ``on_batch`` callback for ``train_epoch``, or None when no bar
            is drawn.
        """
        self._title = epoch_title(epoch, self.epochs, phase)
        self._total = batches or 0
        self._started = self._clock()
        self._drawn_at = None
        if not self._total or not self.draws_bar:
            return None
        return self._on_batch

    def _on_batch(self, index: int) -> None:
        now = self._clock()
        elapsed = now - self._started
        done = index + 1
        if elapsed < BAR_DELAY_SECONDS:
            return
        if (
            self._drawn_at is not None
            and now - self._drawn_at < BAR_INTERVAL_SECONDS
            and done < self._total
        ):
            return
        self._drawn_at = now
        bar = format_bar(done, self._total, elapsed)
        self.stream.write(f"{CLEAR_LINE}{self._title} {bar}")
        self.stream.flush()

    def end_epoch(self, metrics: Mapping[str, Any]) -> str:
        """Writes the finished epoch's line (over the bar, if one was drawn) and returns it."""
        line = format_epoch(metrics, self.epochs)
        prefix = CLEAR_LINE if self._drawn_at is not None else ""
        self.stream.write(f"{prefix}{line}\n")
        self.stream.flush()
        self._drawn_at = None
        return line
