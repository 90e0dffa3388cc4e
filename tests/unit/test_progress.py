"""The training console: the exact epoch line, a bar only on a terminal, the trainer's count."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pytest

from core.progress import (
    BAR_DELAY_SECONDS,
    CLEAR_LINE,
    EpochPrinter,
    format_bar,
    format_epoch,
    format_seconds,
)

if TYPE_CHECKING:
    from core.features import FeatureBundle
    from core.hyperparameters import Hyperparameters, TrainingSetup

    TrainerParts = tuple[Hyperparameters, TrainingSetup, FeatureBundle]

EPOCH_THREE = {
    "epoch": 3,
    "phase": 2,
    "loss": 0.41234,
    "accuracy": 0.81,
    "val_loss": 0.39,
    "val_accuracy": 0.83,
    "epoch_seconds": 2.14,
}


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_epoch_reads_like_keras() -> None:
    assert format_epoch(EPOCH_THREE, 10) == (
        "Epoch 3/10 (phase 2: fine-tuning) - 2.1s - loss: 0.4123 - accuracy: 0.8100 - "
        "val_loss: 0.3900 - val_accuracy: 0.8300"
    )


def test_metrics_keep_keras_order_whatever_the_dict_order_and_others_follow() -> None:
    metrics = {
        "val_accuracy": 0.5,
        "top_k": 0.75,
        "loss": 1.0,
        "phase": 1,
        "epoch": 1,
        "accuracy": 0.25,
        "val_loss": 2.0,
        "note": "not a number",
    }
    assert format_epoch(metrics, 4) == (
        "Epoch 1/4 (phase 1: head) - loss: 1.0000 - accuracy: 0.2500 - val_loss: 2.0000 - "
        "val_accuracy: 0.5000 - top_k: 0.7500"
    )
    assert format_epoch({"epoch": 2}, 2) == "Epoch 2/2"


def test_seconds_stay_short() -> None:
    assert [format_seconds(s) for s in (0.04, 2.14, 99.94, 125.4, 3600)] == [
        "0.0s",
        "2.1s",
        "99.9s",
        "2m05s",
        "60m00s",
    ]


def test_the_bar_fills_with_the_batches() -> None:
    assert format_bar(12, 40, 1.2) == "12/40 [=========>....................] - 1.2s - ETA 2.8s"
    assert format_bar(0, 40, 0.0) == " 0/40 [..............................] - 0.0s"
    assert format_bar(40, 40, 4.0) == "40/40 [==============================] - 4.0s - validating"


def test_off_a_terminal_only_finished_lines_are_written() -> None:
    stream = io.StringIO()
    printer = EpochPrinter(10, stream=stream)

    on_batch = printer.start_epoch(3, phase=2, batches=50)
    line = printer.end_epoch(EPOCH_THREE)

    assert on_batch is None, "a bar callback off a terminal"
    assert stream.getvalue() == line + "\n"
    assert line == format_epoch(EPOCH_THREE, 10)


def test_a_short_epoch_on_a_terminal_draws_no_bar() -> None:
    stream, clock = FakeTerminal(), FakeClock()
    printer = EpochPrinter(10, stream=stream, clock=clock)

    on_batch = printer.start_epoch(3, phase=2, batches=4)
    assert on_batch is not None
    for index in range(4):
        clock.now += BAR_DELAY_SECONDS / 10
        on_batch(index)
    printer.end_epoch(EPOCH_THREE)

    assert stream.getvalue() == format_epoch(EPOCH_THREE, 10) + "\n"


def test_a_long_epoch_on_a_terminal_draws_a_bar_then_its_line_over_it() -> None:
    stream, clock = FakeTerminal(), FakeClock()
    printer = EpochPrinter(10, stream=stream, clock=clock)

    on_batch = printer.start_epoch(3, phase=2, batches=96)
    assert on_batch is not None
    for index in range(96):
        clock.now += 1 / 16  # 6 s in all; binary-exact steps keep the frames predictable
        on_batch(index)
    printer.end_epoch(EPOCH_THREE)

    frames = stream.getvalue().split(CLEAR_LINE)
    assert frames[0] == ""
    bars, last = frames[1:-1], frames[-1]
    assert last == format_epoch(EPOCH_THREE, 10) + "\n"
    assert "\n" not in "".join(bars)
    assert all(bar.startswith("Epoch 3/10 (phase 2: fine-tuning) ") for bar in bars)
    # Nothing in the first second (16 batches), then a frame per 0.1 s at most
    # (every second batch), and the full bar last.
    counts = [bar.split(") ")[1].split(" [")[0] for bar in bars]
    assert counts == [f"{done}/96" for done in range(16, 97, 2)]
    assert bars[-1].endswith("] - 6.0s - validating")


def test_the_bar_can_be_forced_off_on_a_terminal() -> None:
    printer = EpochPrinter(2, stream=FakeTerminal(), bar=False)
    assert printer.start_epoch(1, batches=10) is None


@pytest.fixture(scope="module")
def tiny_trainer_parts() -> TrainerParts:
    """A head-only run on random top-block features: 10 training images, batches of 4."""
    from core.features import FeatureBundle
    from core.hyperparameters import Hyperparameters, TrainingSetup

    rng = np.random.default_rng(0)
    bundle = FeatureBundle(
        backbone="vgg16",
        image_size=32,
        class_names=("circle", "square"),
        labels={"train": np.arange(10) % 2, "validation": np.arange(4) % 2},
        cuts={
            "block5_pool": {
                "train": rng.random((10, 1, 1, 512), dtype="float32"),
                "validation": rng.random((4, 1, 1, 512), dtype="float32"),
            }
        },
    )
    hparams = Hyperparameters(batch_size=4, dense_units=8)
    setup = TrainingSetup("vgg16", "none", 32, epochs=2, head_epochs=2, seed=0)
    return hparams, setup, bundle


def test_the_trainer_says_how_many_batches_an_epoch_calls_back(
    tiny_trainer_parts: TrainerParts,
) -> None:
    from core.training import RecipeTrainer

    trainer = RecipeTrainer(*tiny_trainer_parts)
    stream = io.StringIO()
    # A stopped clock: the callback is handed out, but no frame ever drawn.
    printer = EpochPrinter(trainer.setup.epochs, stream=stream, bar=True, clock=lambda: 0.0)
    called: list[int] = []

    assert trainer.batches_per_epoch == 3  # 10 images, 4 a batch
    while not trainer.done:
        on_batch = printer.start_epoch(
            trainer.epoch + 1,
            phase=trainer.phase_of(trainer.epoch),
            batches=trainer.batches_per_epoch,
        )
        assert on_batch is not None

        def count(index: int, on_batch: Callable[[int], None] = on_batch) -> None:
            called.append(index)
            on_batch(index)

        printer.end_epoch(trainer.train_epoch(on_batch=count))

    assert called == [0, 1, 2, 0, 1, 2]
    lines = stream.getvalue().splitlines()
    pattern = (
        r"Epoch {}/2 \(phase 1: head\) - \d+\.\ds - loss: \d+\.\d{{4}} - accuracy: \d\.\d{{4}} - "
        r"val_loss: \d+\.\d{{4}} - val_accuracy: \d\.\d{{4}}"
    )
    assert [bool(re.fullmatch(pattern.format(n), line)) for n, line in enumerate(lines, 1)] == [
        True,
        True,
    ], lines
