"""What --resume accepts and refuses, before any Ray starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from search_spaces import load_space
from tuning.config import SearchConfig, write_config
from tuning.resume import ResumeError, SavedRun, check_resume, load_run, write_manifest

FINGERPRINT = "f" * 64


def saved_run(tmp_path: Path, **config: object) -> SavedRun:
    run_dir = tmp_path / "run"
    (run_dir / "trials").mkdir(parents=True)
    write_config(SearchConfig(weights="none", image_size=32, **config), run_dir / "config.yaml")  # type: ignore[arg-type]
    write_manifest(
        run_dir, tmp_path / "data", FINGERPRINT, load_space("default"), str(run_dir / "trials")
    )
    return load_run(run_dir, "config.yaml")


def test_a_run_directory_reads_back(tmp_path: Path) -> None:
    saved = saved_run(tmp_path, num_samples=5)
    assert saved.config.num_samples == 5
    assert saved.fingerprint == FINGERPRINT
    assert saved.data_path == str((tmp_path / "data").absolute())
    assert saved.space.to_dict() == load_space("default").to_dict()


def test_the_same_data_and_space_resume(tmp_path: Path) -> None:
    saved = saved_run(tmp_path)
    check_resume(
        saved, config=None, space=load_space("default"), fingerprint=FINGERPRINT,
        data_path="data", force=False,
    )  # fmt: skip


def test_other_data_is_refused_unless_forced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved = saved_run(tmp_path)
    arguments = {"config": None, "space": None, "fingerprint": "0" * 64, "data_path": "elsewhere"}
    with pytest.raises(ResumeError, match="elsewhere.*not the data.*--force"):
        check_resume(saved, force=False, **arguments)  # type: ignore[arg-type]
    with caplog.at_level("WARNING"):
        check_resume(saved, force=True, **arguments)  # type: ignore[arg-type]
    assert "not the data" in caplog.text


def test_another_space_or_config_is_refused(tmp_path: Path) -> None:
    saved = saved_run(tmp_path)
    with pytest.raises(ResumeError, match="search space differs.*augmentation"):
        check_resume(
            saved, config=None, space=load_space({"augmentation": 0.5}),
            fingerprint=FINGERPRINT, data_path="data", force=False,
        )  # fmt: skip
    changed = saved.config.replace(image_size=48, dashboard_port=9999)
    with pytest.raises(ResumeError, match=r"image_size \(32 -> 48\)") as info:
        check_resume(
            saved, config=changed, space=None, fingerprint=FINGERPRINT, data_path="data",
            force=False,
        )  # fmt: skip
    assert "dashboard_port" not in str(info.value), "how a search runs may change on resume"


def test_a_folder_that_is_no_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ResumeError, match="not a bottletune run directory"):
        load_run(tmp_path, "config.yaml")
    saved_run(tmp_path)
    (tmp_path / "run" / "trials").rmdir()
    with pytest.raises(ResumeError, match="never started its trials"):
        load_run(tmp_path / "run", "config.yaml")
