"""TensorFlow process settings for one trial or one training run: threads, GPU memory, logs."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

GPU_MEMORY_SAFETY = 0.9
"""Share of a trial's slice of GPU memory that TensorFlow may allocate.

A hard limit covers TensorFlow's allocator only; the CUDA context, cuDNN and
cuBLAS workspaces of each process come on top, so the slice is not handed
over whole.
"""


class TensorFlowSettingsError(ValueError):
    """TensorFlow already runs with other threads or GPU memory than asked, and cannot change."""


@dataclass(frozen=True)
class GpuMemorySetting:
    """What one visible GPU got in this process.

    Attributes:
        device: TensorFlow's name for the physical device.
        limit_mb: The hard memory limit in MiB, or None for memory growth.
    """

    device: str
    limit_mb: int | None


QUIET_TENSORFLOW_ENVIRONMENT: Mapping[str, str] = {"TF_CPP_MIN_LOG_LEVEL": "3"}
"""What keeps TensorFlow's C++ start-up lines out of a process that has not imported it yet.

Level 3 hides TensorFlow's C++ INFO, WARNING and ERROR lines; 2 would keep
the ERROR ones, among them "failed call to cuInit" on every machine without a
GPU (and in every CPU-only Ray trial on a GPU node), which reads like a
failure. The trade-off: a C++ ERROR line that does matter is hidden too.
Errors that stop a run still reach the user as Python exceptions with their
message, Python-side warnings (Keras, ``warnings``, absl-py) are untouched, and
the case where the hidden cuInit line mattered, a GPU that TensorFlow cannot
use, gets a warning of its own (``configure_gpu_memory``). A level the user set
wins, and ``bottletune -v`` shows every line.

What no level hides: the lines TensorFlow's libraries write while they load,
before TensorFlow hands its level to Abseil logging (which writes everything
to stderr until then): "WARNING: All log messages before absl::InitializeLog()
is called are written to STDERR", the oneDNN notice and, without a CUDA
driver, "Could not find cuda drivers on your machine", twice per process (two
libraries each bring their own copy of the logging code).
``TF_ENABLE_ONEDNN_OPTS=0`` would drop the oneDNN notice, but by changing how
TensorFlow computes on CPUs, which is not worth one INFO line.
"""

NVIDIA_DRIVER_FILE = "/proc/driver/nvidia/version"
"""Present on Linux when NVIDIA's kernel driver is loaded."""


def quiet_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment variables that keep TensorFlow's start-up chatter out of a process.

    For processes this one does not start itself: pass them in a Ray job's
    ``runtime_env["env_vars"]`` so that workers on a joined cluster are as
    quiet as a local Ray's, which inherit the driver's environment.

    Args:
        environ: Where a value the user set wins (default: this process's
            environment), so that e.g. ``TF_CPP_MIN_LOG_LEVEL=0`` reaches the
            workers too.

    Returns:
        Variable names and values, new dict per call.
    """
    environ = os.environ if environ is None else environ
    return {name: environ.get(name, value) for name, value in QUIET_TENSORFLOW_ENVIRONMENT.items()}


def quiet_tensorflow(level: int | None = None) -> None:
    """Hides TensorFlow's C++ start-up chatter in this process, unless the user set a level.

    TensorFlow reads the level once, when it loads, so this works only before
    the first ``import tensorflow`` (or keras) in the process. Some lines come
    earlier still and cannot be hidden: see ``QUIET_TENSORFLOW_ENVIRONMENT``.

    Args:
        level: A ``TF_CPP_MIN_LOG_LEVEL`` to use instead of the quiet one
            (0 shows everything); a level already in the environment still wins.
    """
    if "tensorflow" in sys.modules:
        logger.debug("TensorFlow is already loaded: its C++ log level stays as it is")
    if level is not None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", str(level))
    for name, value in quiet_environment().items():
        os.environ.setdefault(name, value)


def gpu_expected(
    environ: Mapping[str, str] | None = None, *, driver_file: str = NVIDIA_DRIVER_FILE
) -> bool:
    """Whether this process should see a GPU.

    True when ``CUDA_VISIBLE_DEVICES`` names one (Ray sets it for a trial that
    got GPUs; it sets it empty for one that got none), or, where the variable
    is unset, when NVIDIA's driver is loaded on this machine.
    """
    ids = visible_gpu_ids(environ)
    if ids is not None:
        return bool(ids)
    return os.path.exists(driver_file)


def warn_if_gpus_unusable(tf: Any) -> None:
    """Says so when this process should have a GPU and TensorFlow has none.

    Stands in for TensorFlow's own reason (e.g. "failed call to cuInit"),
    which the quiet log level hides.
    """
    if not tf.test.is_built_with_cuda() or not gpu_expected():
        return
    ids = visible_gpu_ids()
    given = f"CUDA_VISIBLE_DEVICES={','.join(ids)}" if ids else "NVIDIA's driver is loaded"
    hint = ""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") == "3":
        hint = "; run with TF_CPP_MIN_LOG_LEVEL=0 (or bottletune -v) to see TensorFlow's reason"
    logger.warning("TensorFlow sees no GPU although %s: this process runs on CPUs%s", given, hint)


def configure_tensorflow(
    threads: int | None,
    *,
    gpu_fraction: float = 0.0,
    gpu_memory_mb: int | None = None,
) -> tuple[GpuMemorySetting, ...]:
    """Matches TensorFlow's thread pools and GPU memory to what this process was given.

    Must run before TensorFlow executes its first op in the process. Later
    calls with the same values are no-ops (a trial in a process Ray Tune
    reused); other values then raise ``TensorFlowSettingsError`` rather than
    leave the process running with settings it was not given.

    Args:
        threads: CPUs reserved for this process (None keeps TensorFlow's
            default of every core, which oversubscribes when trials share a node).
        gpu_fraction: GPUs reserved for this process, as Ray counts them
            (a trial's ``gpus_per_trial``); see ``configure_gpu_memory``.
        gpu_memory_mb: An explicit hard limit per visible GPU, in MiB; it
            overrides the limit derived from ``gpu_fraction``.

    Returns:
        What each visible GPU got; empty on a machine without GPUs.
    """
    quiet_tensorflow()
    import tensorflow as tf

    if threads is not None and threads >= 1:
        wanted = (int(threads), min(2, int(threads)))
        try:
            tf.config.threading.set_intra_op_parallelism_threads(wanted[0])
            tf.config.threading.set_inter_op_parallelism_threads(wanted[1])
        except RuntimeError as error:
            # Fixed once TensorFlow ran its first op: the same counts again (a
            # reused trial process) are fine, other counts would be ignored.
            if tensorflow_threads() != wanted:
                raise TensorFlowSettingsError(
                    f"threads={threads}: TensorFlow in this process already runs "
                    f"{tensorflow_threads()} (intra-op, inter-op) threads, not {wanted}, and "
                    "cannot change them; run this in a new process"
                ) from error
    return configure_gpu_memory(gpu_fraction, memory_mb=gpu_memory_mb)


def tensorflow_threads() -> tuple[int, int]:
    """TensorFlow's (intra-op, inter-op) thread counts in this process (0: its default)."""
    import tensorflow as tf

    return (
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )


def configure_gpu_memory(
    fraction: float = 0.0, *, memory_mb: int | None = None
) -> tuple[GpuMemorySetting, ...]:
    """Keeps this process within its share of each visible GPU's memory.

    Ray's GPU fractions are only bookkeeping: two trials with 0.5 GPU each run
    on the same device, and TensorFlow by default maps nearly all of a GPU's
    memory in the first process that touches it. So:

    - a fraction strictly between 0 and 1 gets a hard limit of
      ``fraction * total * GPU_MEMORY_SAFETY`` MiB on the (single) visible GPU;
    - no fraction, or whole GPUs, get memory growth (allocate on demand);
    - when the total cannot be read (no ``nvidia-smi``), memory growth with a
      warning: trials then share the GPU first come, first served.

    Must run before TensorFlow initializes its GPUs; without GPUs it does nothing.

    Args:
        fraction: GPUs reserved for this process (Ray's ``num_gpus``).
        memory_mb: An explicit hard limit per visible GPU, in MiB.

    Returns:
        What each visible GPU got; empty on a machine without GPUs.
    """
    quiet_tensorflow()
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        warn_if_gpus_unusable(tf)
        return ()
    totals: Sequence[int | None] = [None] * len(gpus)
    if memory_mb is None and 0.0 < fraction < 1.0:
        totals = visible_gpu_memory_mb(len(gpus))
    limits = plan_gpu_memory(len(gpus), fraction, totals, memory_mb=memory_mb)
    if memory_mb is None and 0.0 < fraction < 1.0 and None in limits:
        logger.warning(
            "could not read the GPU's total memory (nvidia-smi): this process, which Ray "
            "gave %.2f of a GPU, grows its memory on demand instead of keeping to its share",
            fraction,
        )
    settings = []
    for gpu, limit in zip(gpus, limits, strict=True):
        try:
            if limit is None:
                tf.config.experimental.set_memory_growth(gpu, True)
            else:
                tf.config.set_logical_device_configuration(
                    gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit)]
                )
        except (RuntimeError, ValueError) as error:
            # TensorFlow already initialized its GPUs in this process (a reused
            # worker): the same setting again is fine, another one is an error.
            current = current_gpu_memory(tf, gpu)
            if current != limit:
                in_effect = "memory growth" if current is None else f"a {current} MiB limit"
                wanted = "memory growth" if limit is None else f"a {limit} MiB limit"
                raise TensorFlowSettingsError(
                    f"gpu_fraction={fraction}: {gpu.name} in this process already has "
                    f"{in_effect}, not {wanted}, and TensorFlow cannot change it; run this "
                    "in a new process"
                ) from error
        settings.append(GpuMemorySetting(device=gpu.name, limit_mb=limit))
    return tuple(settings)


def current_gpu_memory(tf: Any, gpu: Any) -> int | None:
    """The hard memory limit in MiB TensorFlow has for ``gpu``, or None (growth or default)."""
    configs = tf.config.get_logical_device_configuration(gpu) or []
    limits = [c.memory_limit for c in configs if getattr(c, "memory_limit", None) is not None]
    return int(limits[0]) if limits else None


def gpu_memory_limit_mb(
    total_mb: float, fraction: float, *, safety: float = GPU_MEMORY_SAFETY
) -> int | None:
    """The hard memory limit for a process given ``fraction`` of a GPU.

    Args:
        total_mb: The GPU's total memory in MiB.
        fraction: The share of the GPU the process was given.
        safety: Share of the slice left to TensorFlow's allocator.

    Returns:
        The limit in MiB, or None when the process has the whole GPU (or
        more, or no fraction at all) and should grow its memory instead.

    Raises:
        ValueError: A non-positive total, or a safety factor outside (0, 1].
    """
    if not 0.0 < fraction < 1.0:
        return None
    if total_mb <= 0:
        raise ValueError(f"GPU total memory must be positive, got {total_mb} MiB")
    if not 0.0 < safety <= 1.0:
        raise ValueError(f"safety must be in (0, 1], got {safety}")
    return max(1, int(total_mb * fraction * safety))


def plan_gpu_memory(
    gpu_count: int,
    fraction: float,
    totals_mb: Sequence[int | None],
    *,
    memory_mb: int | None = None,
) -> list[int | None]:
    """Per visible GPU, a hard limit in MiB, or None for memory growth.

    Args:
        gpu_count: GPUs TensorFlow sees in this process.
        fraction: GPUs Ray reserved for this process.
        totals_mb: Each visible GPU's total memory, None where unknown.
        memory_mb: An explicit limit for every GPU; wins over ``fraction``.

    Raises:
        ValueError: A non-positive explicit limit, or totals that do not
            match the GPU count.
    """
    if memory_mb is not None:
        if memory_mb <= 0:
            raise ValueError(f"gpu_memory_mb must be positive, got {memory_mb}")
        return [int(memory_mb)] * gpu_count
    if len(totals_mb) != gpu_count:
        raise ValueError(f"{len(totals_mb)} GPU totals for {gpu_count} visible GPUs")
    return [None if total is None else gpu_memory_limit_mb(total, fraction) for total in totals_mb]


def visible_gpu_ids(environ: Mapping[str, str] | None = None) -> list[str] | None:
    """The GPUs this process may use, from ``CUDA_VISIBLE_DEVICES`` (Ray sets it per trial).

    Returns:
        Indices or UUIDs as written, or None when the variable is unset (every GPU).
    """
    value = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def parse_nvidia_smi_memory(output: str) -> list[int]:
    """MiB per GPU from ``nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits``.

    Raises:
        ValueError: A line that is not a whole number of MiB.
    """
    return [int(float(line.strip())) for line in output.splitlines() if line.strip()]


def visible_gpu_memory_mb(gpu_count: int) -> list[int | None]:
    """Total memory of each GPU TensorFlow sees, in TensorFlow's order; None where unknown.

    TensorFlow numbers the GPUs in ``CUDA_VISIBLE_DEVICES`` order, while
    ``nvidia-smi`` ignores that variable, so the devices are asked for by id.
    """
    unknown: list[int | None] = [None] * gpu_count
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return unknown
    ids = visible_gpu_ids()
    command = [executable, "--query-gpu=memory.total", "--format=csv,noheader,nounits"]
    if ids is not None:
        command.append(f"--id={','.join(ids)}")
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
        totals = parse_nvidia_smi_memory(result.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as error:
        logger.debug("nvidia-smi gave no GPU memory: %s", error)
        return unknown
    if len(totals) != gpu_count:
        logger.debug("nvidia-smi listed %d GPUs, TensorFlow sees %d", len(totals), gpu_count)
        return unknown
    return list(totals)


class FreshInterpreter:
    """Python code running in a new interpreter, whose last output line is JSON.

    For work that needs TensorFlow in a process that must not start it (a
    search's driver: on a GPU node TensorFlow would keep the GPU's memory
    mapped for the whole search). The interpreter's memory goes when it exits.
    It starts at once; ``result`` waits for it, so the caller can do other
    work meanwhile (a search starts Ray while its cache plan's probe runs).

    Args:
        code: Python source; ``sys.argv[1:]`` are ``args``; it prints JSON last.
        what: What it computes, for the error message.
        cpu_only: Hide the GPUs from it.
    """

    def __init__(
        self, code: str, args: Sequence[str], *, what: str, cpu_only: bool, timeout_s: float = 300
    ) -> None:
        env = {**os.environ, **quiet_environment()}
        if cpu_only:
            env["CUDA_VISIBLE_DEVICES"] = ""
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        self.what = what
        self.timeout_s = timeout_s
        self._process = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip

    def result(self) -> Any:
        """The JSON it printed last.

        Raises:
            RuntimeError: The interpreter failed or timed out (its error output
                is in the message).
        """
        import json

        try:
            stdout, stderr = self._process.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.communicate()
            raise RuntimeError(f"{self.what} took over {self.timeout_s:.0f} s") from None
        if self._process.returncode != 0:
            raise RuntimeError(f"{self.what} failed: {stderr[-2000:]}")
        return json.loads(stdout.strip().splitlines()[-1])


def json_from_fresh_interpreter(
    code: str, args: Sequence[str], *, what: str, cpu_only: bool, timeout_s: float = 300
) -> Any:
    """``FreshInterpreter(...).result()``: runs ``code`` in a new Python and waits for its JSON."""
    return FreshInterpreter(code, args, what=what, cpu_only=cpu_only, timeout_s=timeout_s).result()
