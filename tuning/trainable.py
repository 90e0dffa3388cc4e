"""The Ray Tune trainable: one trial of the recipe, reporting and checkpointing each epoch.

Each report carries ``cost``, the trial's compute so far in head epochs
(``core.cost``), which cost-aware ASHA uses as its time. The first report of
each run of the trial (a retry is a new run) also says what the trial spent
before its first epoch, step by step (``startup_*_s``), which TensorFlow
thread counts it runs with and the process's resident memory: with
``reuse_actors`` (on by default, ``tuning.tuner.new_tuner``) a later trial in
the same process finds TensorFlow imported and configured, and these show it;
such a trial also reports ``previous_close_s``, the time the trial before it
took to free its models. Every trial frees them when it ends, however it ends
(``RecipeTrainer.close``), so that the process's memory stays flat.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.object_store import SharedFeatures
from core.cost import EpochCosts
from core.hyperparameters import Hyperparameters, TrainingSetup

STARTUP_STEPS = ("process", "imports", "configure", "fetch", "build", "restore")
"""What a trial spends before its first epoch, in order; each is a ``startup_<step>_s`` metric.

process: from the process's start to the trainable (Ray's worker start-up and
unpickling the trainable), only in a process's first trial; imports: this
module's lazy imports (TensorFlow, in a new process); configure: TensorFlow's
threads and GPU memory; fetch: the trial's features from the object store;
build: the cost table, the head and its optimizer; restore: the checkpoint.
"""

_trials_in_process = 0
"""Trials this process has started: above 1, Ray Tune reused the actor."""

_last_close_seconds: float | None = None
"""How long the process's previous trial took to free its models (``RecipeTrainer.close``)."""


@dataclass(frozen=True)
class TrialContext:
    """The search-wide settings every trial shares (not searched over).

    Attributes:
        setup: Backbone, weights, image size, epochs (ASHA's max_t) and seed.
        cpus_per_trial: CPUs Ray reserves per trial; TensorFlow gets as many threads.
        gpus_per_trial: GPUs Ray reserves per trial. Ray's fractions are only
            logical, so a fraction also caps TensorFlow's share of the GPU's memory.
        epoch_costs: What an epoch costs per depth; None: the trial counts it
            (``core.cost.epoch_costs``, once per process).
    """

    setup: TrainingSetup
    cpus_per_trial: float
    gpus_per_trial: float = 0.0
    epoch_costs: EpochCosts | None = None


@dataclass
class StartupClock:
    """Seconds per start-up step of one trial run (see ``STARTUP_STEPS``)."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STARTUP_STEPS, 0.0))

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started

    def metrics(self) -> dict[str, float]:
        """``startup_<step>_s`` for every step and ``startup_total_s``, their sum."""
        metrics = {f"startup_{name}_s": self.seconds[name] for name in STARTUP_STEPS}
        metrics["startup_total_s"] = sum(self.seconds.values())
        return metrics


def recipe_trainable(
    config: dict[str, Any], *, features: SharedFeatures, context: TrialContext
) -> None:
    """Trains one configuration, reporting metrics and a checkpoint every epoch.

    The trial fetches from the object store only the cached entries its own
    hyperparameters use (waiting for any still being built); augmented trials
    train on cached views, or augment afresh where the cache plan chose that.
    """
    global _trials_in_process, _last_close_seconds
    _trials_in_process += 1
    # Ray Tune reuses this process for a next trial only once this trial's
    # thread has ended; it waits TUNE_FUNCTION_THREAD_TIMEOUT_S (2 s by
    # default) and otherwise fails the NEXT trial. Ending a trial (its last
    # report, freeing its models) took longer than 2 s on a loaded machine.
    os.environ.setdefault(THREAD_TIMEOUT_ENV, REUSE_WAIT_S)
    clock = StartupClock()
    if _trials_in_process == 1:
        clock.seconds["process"] = process_age_seconds()
    with clock.step("imports"):
        from ray import tune

        from cluster.monitoring import TrialMetrics, for_progress_table
        from core.cost import epoch_costs
        from core.runtime import configure_tensorflow
        from core.training import RecipeTrainer
    with clock.step("configure"):
        threads = max(1, int(context.cpus_per_trial))
        configure_tensorflow(threads, gpu_fraction=context.gpus_per_trial)
    hparams = Hyperparameters.from_mapping(config)
    with clock.step("fetch"):
        # Waits only for this trial's entries, should the cache still be building them.
        bundle = features.fetch_for(hparams)
    with clock.step("build"):
        setup = context.setup
        costs = context.epoch_costs or epoch_costs(setup.backbone, setup.image_size)
        monitor = TrialMetrics(tune.get_context().get_trial_id())
        trainer = RecipeTrainer(hparams, setup, bundle)
    try:
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with clock.step("restore"), checkpoint.as_directory() as directory:
                trainer.restore(directory)
        first_report = _first_report(clock)
        while not trainer.done:
            crash = _crash_hook(trainer.epoch + 1)
            phase = trainer.phase_of(trainer.epoch)
            metrics = for_progress_table(trainer.train_epoch(on_batch=crash))
            metrics["epoch_cost"] = costs.epoch_cost(hparams.unfreeze_blocks, phase)
            metrics["cost"] = costs.cumulative(setup, hparams.unfreeze_blocks, trainer.epoch)
            metrics["resumed"] = checkpoint is not None
            metrics.update(first_report)
            first_report = {}
            monitor.record_epoch(metrics)
            with tempfile.TemporaryDirectory(prefix="bottletune-ckpt-") as directory:
                trainer.save(directory)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
    finally:
        # Also when ASHA stops the trial (Ray raises SystemExit in tune.report)
        # or it fails: with reuse_actors, the next trial runs in this process.
        started = time.perf_counter()
        trainer.close()
        _last_close_seconds = time.perf_counter() - started


def _first_report(clock: StartupClock) -> dict[str, Any]:
    """What the first report of a trial run adds: start-up, process and TensorFlow settings."""
    from core.runtime import tensorflow_threads

    report: dict[str, Any] = {
        **clock.metrics(),
        "process_trial": _trials_in_process,
        "rss_mb": resident_memory_mb(),
    }
    if _last_close_seconds is not None:
        report["previous_close_s"] = _last_close_seconds
    # What Ray Tune's reset_config will read in this process (see THREAD_TIMEOUT_ENV).
    report["reuse_wait_s"] = float(os.environ[THREAD_TIMEOUT_ENV])
    report["intra_op_threads"], report["inter_op_threads"] = tensorflow_threads()
    return report


def process_age_seconds() -> float:
    """Seconds since this process started (from /proc; 0.0 where there is none)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except OSError:
        return 0.0
    # Field 22 of stat (the 20th after the command name) is the start time in clock ticks.
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return max(0.0, uptime - started)


def resident_memory_mb() -> float:
    """This process's resident memory in MB (10^6 bytes), from /proc/self/statm (0.0 if none)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return 0.0
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 1e6


THREAD_TIMEOUT_ENV = "TUNE_FUNCTION_THREAD_TIMEOUT_S"
REUSE_WAIT_S = "300"
"""Seconds Ray Tune waits for a trial's thread to end before reusing its process."""

CRASH_MARKER_ENV = "BOTTLETUNE_TEST_CRASH_MARKER"
CRASH_EPOCH_ENV = "BOTTLETUNE_TEST_CRASH_EPOCH"


def _crash_hook(epoch: int) -> Callable[[int], None] | None:
    """Fault injection for tests: the first trial to reach the middle of epoch N dies there.

    Only when both environment variables are set (N is 1-based). The trial's
    process exits right after the second training batch of that epoch, with
    the epoch part-trained and not checkpointed (an epoch of one batch never
    crashes). The marker file makes it happen once per search, so that the
    retried trial can show it resumed from the checkpoint of epoch N - 1.
    ``os._exit`` skips every clean-up, as a killed process would.
    """
    marker = os.environ.get(CRASH_MARKER_ENV)
    if not marker or os.environ.get(CRASH_EPOCH_ENV) != str(epoch):
        return None

    def crash_mid_epoch(batch: int) -> None:
        if batch != 1:
            return
        try:
            descriptor = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(descriptor, f"{os.getpid()} {epoch} {batch}\n".encode())
        os.close(descriptor)
        os._exit(17)

    return crash_mid_epoch
