"""GPU memory per process: the limit a GPU fraction gets, and TensorFlow's wiring of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from core import runtime
from core.runtime import (
    GPU_MEMORY_SAFETY,
    gpu_memory_limit_mb,
    parse_nvidia_smi_memory,
    plan_gpu_memory,
    visible_gpu_ids,
)


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [
        (0.25, int(24_576 * 0.25 * GPU_MEMORY_SAFETY)),
        (0.5, int(24_576 * 0.5 * GPU_MEMORY_SAFETY)),
        (0.0, None),  # no GPU share: grow on demand
        (1.0, None),  # a whole GPU: grow on demand
        (2.0, None),  # several whole GPUs
    ],
)
def test_a_fraction_of_a_gpu_gets_that_share_of_its_memory(
    fraction: float, expected: int | None
) -> None:
    assert gpu_memory_limit_mb(24_576, fraction) == expected


def test_trials_sharing_a_gpu_stay_within_it_together() -> None:
    total = 24_576
    for trials in (2, 3, 4, 8):
        limit = gpu_memory_limit_mb(total, 1 / trials)
        assert limit is not None
        assert trials * limit <= total * GPU_MEMORY_SAFETY


def test_the_limit_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="total memory"):
        gpu_memory_limit_mb(0, 0.5)
    with pytest.raises(ValueError, match="safety"):
        gpu_memory_limit_mb(1000, 0.5, safety=1.5)
    assert gpu_memory_limit_mb(1, 0.01) == 1  # never a zero limit


def test_plan_uses_an_explicit_limit_then_the_fraction_then_growth() -> None:
    assert plan_gpu_memory(2, 0.5, [None, None], memory_mb=4000) == [4000, 4000]
    assert plan_gpu_memory(1, 0.5, [16_000]) == [int(16_000 * 0.5 * GPU_MEMORY_SAFETY)]
    assert plan_gpu_memory(1, 0.5, [None]) == [None]  # total unknown: growth
    assert plan_gpu_memory(2, 1.0, [None, None]) == [None, None]
    with pytest.raises(ValueError, match="positive"):
        plan_gpu_memory(1, 0.5, [None], memory_mb=0)
    with pytest.raises(ValueError, match="1 GPU totals for 2"):
        plan_gpu_memory(2, 0.5, [16_000])


def test_visible_gpus_come_from_cuda_visible_devices() -> None:
    assert visible_gpu_ids({}) is None
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "2"}) == ["2"]
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "0, 3"}) == ["0", "3"]
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "GPU-1a2b"}) == ["GPU-1a2b"]


def test_nvidia_smi_memory_is_parsed_per_gpu() -> None:
    assert parse_nvidia_smi_memory("23028\n23028\n") == [23028, 23028]
    assert parse_nvidia_smi_memory("") == []
    with pytest.raises(ValueError):
        parse_nvidia_smi_memory("[N/A]\n")


def test_without_gpus_nothing_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")

    def no_query(count: int) -> list[int | None]:
        raise AssertionError("nvidia-smi must not be asked when there is no GPU")

    monkeypatch.setattr(runtime, "visible_gpu_memory_mb", no_query)
    assert runtime.configure_gpu_memory(0.25) == ()
    # threads=None: the pytest process keeps its TensorFlow thread pools.
    assert runtime.configure_tensorflow(None, gpu_fraction=0.5) == ()


@dataclass(frozen=True)
class FakeGpu:
    name: str
    device_type: str = "GPU"


def fake_tensorflow_gpus(
    monkeypatch: pytest.MonkeyPatch, count: int, totals: list[int | None]
) -> dict[str, list[Any]]:
    """Makes TensorFlow report ``count`` GPUs and records what it is told about them."""
    import tensorflow as tf

    calls: dict[str, list[Any]] = {"growth": [], "limit": []}
    gpus = [FakeGpu(f"/physical_device:GPU:{index}") for index in range(count)]
    monkeypatch.setattr(
        tf.config, "list_physical_devices", lambda kind=None: gpus if kind == "GPU" else []
    )
    monkeypatch.setattr(
        tf.config.experimental,
        "set_memory_growth",
        lambda gpu, enabled: calls["growth"].append((gpu.name, enabled)),
    )
    monkeypatch.setattr(
        tf.config,
        "set_logical_device_configuration",
        lambda gpu, configs: calls["limit"].append((gpu.name, configs[0].memory_limit)),
    )
    monkeypatch.setattr(runtime, "visible_gpu_memory_mb", lambda count: list(totals))
    return calls


def test_a_gpu_fraction_sets_a_hard_limit_on_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_tensorflow_gpus(monkeypatch, 1, [24_000])
    settings = runtime.configure_gpu_memory(0.25)
    limit = int(24_000 * 0.25 * GPU_MEMORY_SAFETY)
    assert calls == {"growth": [], "limit": [("/physical_device:GPU:0", limit)]}
    assert [(s.device, s.limit_mb) for s in settings] == [("/physical_device:GPU:0", limit)]


def test_whole_gpus_grow_their_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_tensorflow_gpus(monkeypatch, 2, [None, None])
    settings = runtime.configure_gpu_memory(2.0)
    assert calls["limit"] == []
    assert calls["growth"] == [("/physical_device:GPU:0", True), ("/physical_device:GPU:1", True)]
    assert all(setting.limit_mb is None for setting in settings)


def test_an_unknown_total_falls_back_to_growth_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = fake_tensorflow_gpus(monkeypatch, 1, [None])
    with caplog.at_level("WARNING", logger="core.runtime"):
        runtime.configure_gpu_memory(0.5)
    assert calls == {"growth": [("/physical_device:GPU:0", True)], "limit": []}
    assert "grows its memory on demand" in caplog.text


def test_an_explicit_limit_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_tensorflow_gpus(monkeypatch, 1, [24_000])
    runtime.configure_tensorflow(None, gpu_fraction=0.25, gpu_memory_mb=3000)
    assert calls["limit"] == [("/physical_device:GPU:0", 3000)]


@pytest.mark.parametrize("cpus", [1, 3])
def test_tensorflow_threads_match_the_cpus_a_trial_was_given(cpus: int) -> None:
    """In a fresh process, as a trial's is: TensorFlow fixes its pools at its first op."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from core.runtime import configure_tensorflow\n"
        "configure_tensorflow(int(sys.argv[1]))\n"
        "import tensorflow as tf\n"
        "tf.constant(1.0) + 1.0\n"  # the pools exist now, with these sizes
        "print(tf.config.threading.get_intra_op_parallelism_threads(),"
        " tf.config.threading.get_inter_op_parallelism_threads())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(cpus)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    intra, inter = (int(value) for value in result.stdout.split()[-2:])
    assert (intra, inter) == (cpus, min(2, cpus))
