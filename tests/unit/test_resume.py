"""What --resume accepts and refuses, before any Ray starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from search_spaces import load_space
from tuning.config import load_config
from tuning.resume import ResumeError, SavedRun, check_resume, load_run
from tuning.run_dir import start_run_dir

FINGERPRINT = "f" * 64


def saved_run(tmp_path: Path, **config: object) -> SavedRun:
    run_dir = tmp_path / "run"
    settings = load_config(overrides={"weights": "none", "image_size": 32, **config})
    start_run_dir(
        run_dir, settings, load_space("default"), tmp_path / "data", FINGERPRINT,
        str(run_dir / "trials"),
    )  # fmt: skip
    (run_dir / "trials").mkdir()
    return load_run(run_dir)


def test_a_run_directory_reads_back(tmp_path: Path) -> None:
    saved = saved_run(tmp_path, num_samples=5)
    assert saved.config.schedule.num_samples == 5
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


def journal(path: Path) -> object:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def test_trials_asked_for_after_tunes_last_checkpoint_are_set_apart(tmp_path: Path) -> None:
    import optuna

    from tuning.resume import ORPHAN_ATTR, ORPHANS_STUDY_ATTR, fail_orphaned_study_trials

    storage = journal(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    asked = [study.ask() for _ in range(5)]
    study.tell(asked[0], 0.5)
    study.tell(asked[1], 0.6)
    # Tune's checkpoint held trials 0-2 (trial 2 still running then: it resumes and
    # will be told); the driver that died afterwards asked for 3 and 4, and 3 even
    # finished before the kill.
    study.tell(asked[3], 0.9)
    assert fail_orphaned_study_trials(storage, "s", saved_trials=3) == [3, 4]
    reread = optuna.load_study(study_name="s", storage=journal(tmp_path / "optuna.journal"))
    assert [t.state.name for t in reread.trials] == [
        "COMPLETE", "COMPLETE", "RUNNING", "COMPLETE", "FAIL",
    ]  # fmt: skip
    assert reread.trials[4].user_attrs == {ORPHAN_ATTR: True}
    assert reread.user_attrs[ORPHANS_STUDY_ATTR] == [3, 4]

    # A second interruption: Tune's trials are the study's trials but the orphans.
    study.tell(asked[2], 0.7)
    rerun, lost = study.ask(), study.ask()  # numbers 5 and 6
    study.tell(rerun, 0.8)
    assert fail_orphaned_study_trials(storage, "s", saved_trials=4) == [lost.number]
    assert fail_orphaned_study_trials(storage, "s", saved_trials=4) == []  # idempotent
    states = [t.state.name for t in optuna.load_study(study_name="s", storage=storage).trials]
    assert states[5:] == ["COMPLETE", "FAIL"], "a trial Tune still runs was set apart"


def test_an_unreadable_experiment_state_leaves_the_study_alone(tmp_path: Path) -> None:
    import json

    from tuning.resume import trials_in_saved_experiment

    (tmp_path / "experiment_state-2026-12-01_10-00-00.json").write_text(json.dumps({"x": 1}))
    assert trials_in_saved_experiment(str(tmp_path)) is None


def test_the_saved_experiment_is_counted_from_tunes_newest_state_file(tmp_path: Path) -> None:
    import json

    from tuning.resume import trials_in_saved_experiment

    assert trials_in_saved_experiment(str(tmp_path)) is None
    (tmp_path / "experiment_state-2026-12-01_10-00-00.json").write_text(
        json.dumps({"trial_data": [["a", "b"]] * 2})
    )
    (tmp_path / "experiment_state-2026-12-01_11-00-00.json").write_text(
        json.dumps({"trial_data": [["a", "b"]] * 3})
    )
    assert trials_in_saved_experiment(str(tmp_path)) == 3
