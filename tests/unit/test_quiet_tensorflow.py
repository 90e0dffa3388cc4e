"""TensorFlow's start-up chatter: the quiet environment, the user's say, and the GPU warning."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from core import runtime
from core.runtime import gpu_expected, quiet_environment, quiet_tensorflow, warn_if_gpus_unusable


def fake_tensorflow(built_with_cuda: bool) -> SimpleNamespace:
    return SimpleNamespace(test=SimpleNamespace(is_built_with_cuda=lambda: built_with_cuda))


def test_the_quiet_environment_hides_tensorflows_cpp_lines_down_to_errors() -> None:
    assert quiet_environment({}) == {"TF_CPP_MIN_LOG_LEVEL": "3"}


def test_a_level_the_user_set_travels_instead() -> None:
    assert quiet_environment({"TF_CPP_MIN_LOG_LEVEL": "0"}) == {"TF_CPP_MIN_LOG_LEVEL": "0"}
    first = quiet_environment({})
    first["TF_CPP_MIN_LOG_LEVEL"] = "1"
    assert quiet_environment({}) == {"TF_CPP_MIN_LOG_LEVEL": "3"}, "a shared dict was handed out"


@pytest.mark.parametrize(
    ("given", "level", "expected"),
    [(None, None, "3"), (None, 0, "0"), ("1", None, "1"), ("1", 0, "1")],
)
def test_quiet_tensorflow_sets_the_level_unless_the_user_did(
    monkeypatch: pytest.MonkeyPatch, given: str | None, level: int | None, expected: str
) -> None:
    if given is None:
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", given)

    quiet_tensorflow(level)

    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == expected


def test_a_gpu_is_expected_where_ray_gave_one_or_the_driver_is_loaded(tmp_path: Path) -> None:
    driver = tmp_path / "version"
    assert gpu_expected({"CUDA_VISIBLE_DEVICES": "0"}, driver_file=str(driver))
    assert not gpu_expected({"CUDA_VISIBLE_DEVICES": ""}, driver_file=str(driver))
    assert not gpu_expected({}, driver_file=str(driver))
    driver.write_text("NVRM version: 550\n")
    assert gpu_expected({}, driver_file=str(driver))
    assert not gpu_expected({"CUDA_VISIBLE_DEVICES": ""}, driver_file=str(driver))


def test_a_gpu_tensorflow_cannot_use_gets_a_warning_of_its_own(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")

    with caplog.at_level(logging.WARNING, logger=runtime.__name__):
        warn_if_gpus_unusable(fake_tensorflow(built_with_cuda=True))
        warn_if_gpus_unusable(fake_tensorflow(built_with_cuda=False))  # a CPU-only build: silent

    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "CUDA_VISIBLE_DEVICES=1" in message
    assert "TF_CPP_MIN_LOG_LEVEL=0" in message


def test_no_warning_where_no_gpu_was_expected(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # Ray's value for a CPU-only trial

    with caplog.at_level(logging.WARNING, logger=runtime.__name__):
        warn_if_gpus_unusable(fake_tensorflow(built_with_cuda=True))

    assert caplog.records == []
