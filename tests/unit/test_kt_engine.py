"""The keras-tuner engine's settings and refusals: what it cannot do fails before any work.

The searches themselves (real KerasTuner oracles, real Keras training) are in
tests/integration/test_kt_engine.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuning.config import ConfigError, EngineSettings, load_config
from tuning.kt_engine import (
    BAYESIAN_MODULES,
    EngineError,
    check_keras_tuner_config,
    initial_points,
    oracle_seed,
    refuse_ray_engine_options,
)
from tuning.search import run_search

REPO_ROOT = Path(__file__).resolve().parents[2]

KERAS_TUNER = {"engine": "keras-tuner"}


def test_engine_defaults_to_ray_with_the_bayesian_oracle() -> None:
    config = load_config()

    assert config.engine == EngineSettings(engine="ray", kt_oracle="bayesian")
    assert config.to_dict()["engine"] == "ray"
    assert config.to_dict()["kt_oracle"] == "bayesian"


@pytest.mark.parametrize(
    ("key", "value", "valid"),
    [("engine", "spark", "ray, keras-tuner"), ("kt_oracle", "grid", "hyperband, bayesian, random")],
)
def test_unknown_engine_or_oracle_is_an_error_naming_the_key(
    key: str, value: str, valid: str
) -> None:
    expected = f"--set: {key}='{value}': must be one of {valid}"
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(overrides={key: value})

    assert info.value.key == key


def test_keras_tuner_needs_no_asha_grace_period_below_max_epochs() -> None:
    # ASHA's grace_period (default 4) must fit in max_epochs only for the Ray engine.
    with pytest.raises(ConfigError, match="grace_period=4"):
        load_config(overrides={"max_epochs": 2})

    config = load_config(overrides={**KERAS_TUNER, "max_epochs": 2, "kt_oracle": "random"})

    assert config.schedule.max_epochs == 2
    check_keras_tuner_config(config)


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("grace_period", 2, "ASHA"),
        ("reduction_factor", 3, "ASHA"),
        ("sampler", "random", "Optuna sampler"),
        ("max_concurrent_trials", 2, "one at a time"),
        ("gpus_per_trial", 0.5, "0 \\(CPU\\) or 1"),
        ("gpus_per_trial", 2.0, "0 \\(CPU\\) or 1"),
        ("max_failures", -1, ">= 0"),
        ("storage_path", "/shared/tune", "RUN_DIR/keras_tuner"),
    ],
)
def test_ray_only_settings_are_refused_naming_the_key(key: str, value: object, reason: str) -> None:
    config = load_config(overrides={**KERAS_TUNER, "max_epochs": 4, key: value})

    with pytest.raises(EngineError, match=f"^{key}={value!r} .*{reason}.*engine=ray") as info:
        check_keras_tuner_config(config)

    assert isinstance(info.value, ValueError)
    assert info.value.key == key


def test_settings_both_engines_honour_are_accepted() -> None:
    config = load_config(
        overrides={
            **KERAS_TUNER,
            "kt_oracle": "hyperband",
            "gpus_per_trial": 1,
            "cpus_per_trial": 2,
            "max_failures": 1,
            "time_budget_s": 60,
            "max_concurrent_trials": 1,
        }
    )

    check_keras_tuner_config(config)


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"address": "auto"}, "address='auto' \\(--address\\)"),
        ({"num_cpus": 4}, "num_cpus=4 \\(--num-cpus\\)"),
        ({"num_gpus": 1}, "num_gpus=1 \\(--num-gpus\\)"),
        ({"ray_temp_dir": "/tmp/ray"}, "ray_temp_dir='/tmp/ray'"),
        ({"resumed": True}, "resume \\(--resume RUN_DIR\\): engine=keras-tuner cannot resume"),
        ({"warm_start": "old/run"}, "warm_start='old/run' \\(--warm-start\\)"),
    ],
)
def test_ray_engine_arguments_are_refused_naming_the_flag(
    arguments: dict[str, object], named: str
) -> None:
    with pytest.raises(EngineError, match=f"^{named}"):
        refuse_ray_engine_options(**arguments)  # type: ignore[arg-type]


def test_run_search_dispatches_to_keras_tuner_and_refuses_a_cluster(tmp_path: Path) -> None:
    config = load_config(overrides=KERAS_TUNER)
    out = tmp_path / "run"

    # The Ray engine would try to join the cluster; this engine refuses before any work.
    with pytest.raises(EngineError, match="address='ray://head:10001' \\(--address\\)"):
        run_search(config, tmp_path / "no-data", out, address="ray://head:10001")

    assert not out.exists()


def test_a_keras_tuner_search_refuses_a_float_conditioned_space_before_writing(
    shapes_data: Path, tmp_path: Path
) -> None:
    from search_spaces import SpaceError

    space = tmp_path / "space.yaml"
    space.write_text(
        "dropout: {type: float, low: 0.0, high: 0.6}\n"
        "dense_units: {type: categorical, choices: [8, 16], when: 'dropout > 0.3'}\n"
    )
    config = load_config(overrides={**KERAS_TUNER, "space": str(space), "weights": "none"})
    out = tmp_path / "run"

    with pytest.raises(SpaceError, match="'dense_units'.*float range"):
        run_search(config, shapes_data, out, progress=False)

    assert not out.exists()


def test_oracle_seed_is_never_zero_which_keras_tuner_reads_as_no_seed() -> None:
    assert oracle_seed(0) == 1
    assert len({oracle_seed(seed) for seed in range(100)}) == 100
    assert all(oracle_seed(seed) > 0 for seed in (-5, 0, 2**31 - 1, 2**40))


def test_bayesian_initial_points_leave_trials_to_the_gaussian_process() -> None:
    assert initial_points(16, 7) == 8
    assert initial_points(100, 2) == 6  # KerasTuner's own default, 3 per dimension
    assert initial_points(3, 7) == 2


def test_the_bayesian_oracle_names_its_missing_package_before_any_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if scikit-learn were not installed (KerasTuner would fail only once the oracle is built).
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *rest: None if name == "sklearn" else find_spec(name, *rest),
    )
    config = load_config(overrides=KERAS_TUNER)

    with pytest.raises(EngineError, match="^kt_oracle='bayesian' needs .*missing: sklearn"):
        check_keras_tuner_config(config)
    check_keras_tuner_config(config.replace(kt_oracle="random"))


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("hyperband", "HyperbandOracle"),
        ("bayesian", "BayesianOptimizationOracle"),
        ("random", "RandomSearchOracle"),
    ],
)
def test_make_oracle_builds_keras_tuners_own_oracle(name: str, kind: str) -> None:
    import keras_tuner

    from search_spaces import load_space, to_keras_tuner
    from tuning.kt_engine import make_oracle

    if name == "bayesian" and any(importlib.util.find_spec(m) is None for m in BAYESIAN_MODULES):
        pytest.skip("the Bayesian oracle needs SciPy and scikit-learn (its error is tested above)")
    hyperparameters = keras_tuner.HyperParameters()
    to_keras_tuner(load_space("default"), hyperparameters)
    config = load_config(
        overrides={**KERAS_TUNER, "kt_oracle": name, "num_samples": 5, "max_epochs": 9, "seed": 7}
    )

    oracle = make_oracle(config, hyperparameters)

    assert type(oracle) is getattr(keras_tuner.oracles, kind)
    assert oracle.max_trials == 5
    assert oracle.seed == oracle_seed(7)
    assert (oracle.objective.name, oracle.objective.direction) == ("val_accuracy", "max")
    names = [hp.name for hp in oracle.hyperparameters.space]
    assert names == list(load_space("default").names())
    if name == "hyperband":
        assert (oracle.max_epochs, oracle.factor) == (9, 3)
    if name == "bayesian":
        assert oracle.num_initial_points == initial_points(5, len(names))


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=cwd,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO_ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--address", "auto"], "address='auto' (--address)"),
        (["--set", "grace_period=2"], "grace_period=2 is ASHA's"),
        (["--set", "max_concurrent_trials=4"], "max_concurrent_trials=4"),
        (["--set", "gpus_per_trial=0.25"], "gpus_per_trial=0.25"),
    ],
)
def test_cli_engine_flag_refuses_what_keras_tuner_cannot_do(
    extra: list[str], named: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"

    result = run_cli(
        "tune", "--engine", "keras-tuner", "--data", str(tmp_path), "--out", str(out), *extra,
        cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("bottletune tune: error: ")
    assert named in result.stderr
    assert not out.exists()


def test_cli_engine_flag_is_validated_as_the_engine_key(tmp_path: Path) -> None:
    result = run_cli(
        "tune", "--engine", "spark", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
        cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 2
    assert "engine='spark': must be one of ray, keras-tuner" in result.stderr


def test_check_config_shows_the_engine_keys(tmp_path: Path) -> None:
    result = run_cli(
        "check-config", "--set", "engine=keras-tuner", "--set", "kt_oracle=hyperband",
        cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "engine: keras-tuner" in result.stdout
    assert "kt_oracle: hyperband" in result.stdout


def test_importing_the_engine_imports_no_heavy_library() -> None:
    code = (
        "import json, sys\nimport tuning.kt_engine, tuning.search\n"
        "print(json.dumps([m for m in ('ray', 'keras_tuner', 'tensorflow', 'keras') "
        "if m in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_trials_are_summarized_with_the_ray_engines_statuses_and_history_rows() -> None:
    import keras_tuner
    from keras_tuner.engine.trial import Trial

    from tuning.kt_engine import summarize_keras_tuner_trial

    hyperparameters = keras_tuner.HyperParameters()
    hyperparameters.Int("unfreeze_blocks", 0, 1)
    hyperparameters.values.update({"unfreeze_blocks": 1, "tuner/epochs": 1, "tuner/round": 0})
    epoch = {"epoch": 1, "phase": 1, "loss": 0.7, "accuracy": 0.5, "val_loss": 0.69}
    epoch.update(val_accuracy=0.75, epoch_seconds=0.1)
    stopped = Trial(hyperparameters, trial_id="00", status="COMPLETED")
    failed = Trial(hyperparameters.copy(), trial_id="01", status="FAILED")
    failed.message = "Traceback ...\nValueError: no batches"

    early = summarize_keras_tuner_trial(stopped, [epoch], 3, Path("/run/keras_tuner/trial_00"))
    error = summarize_keras_tuner_trial(failed, [epoch], 3, Path("/run/keras_tuner/trial_01"))

    assert (early.status, early.epochs, early.val_accuracy) == ("stopped_early", 1, 0.75)
    assert early.searched == {"unfreeze_blocks": 1}
    assert early.hyperparameters.unfreeze_blocks == 1
    assert early.history == [
        {"training_iteration": 1, "phase": 1, "val_accuracy": 0.75, "val_loss": 0.69, "loss": 0.7}
    ]
    assert (error.status, error.val_accuracy) == ("error", None)
    assert error.error is not None and error.error.endswith("ValueError: no batches")
    assert error.history == early.history  # the epochs it trained before it failed
