"""Unit tests for search_spaces: validation, loading, queries and the three adapters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.hyperparameters import Hyperparameters
from search_spaces import (
    PRESETS,
    Condition,
    Parameter,
    SearchSpace,
    SpaceError,
    load_space,
    space_from_mapping,
    to_keras_tuner,
    to_optuna,
    to_ray_tune,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

FLOAT = {"type": "float", "low": 0.1, "high": 0.5}


def _optuna_trials(space: SearchSpace, n_trials: int, seed: int = 0) -> list[Any]:
    import optuna

    define_by_run = to_optuna(space)

    def objective(trial: optuna.trial.Trial) -> float:
        define_by_run(trial)
        return 0.0

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    study.optimize(objective, n_trials=n_trials)
    return study.trials


# --- import purity ---------------------------------------------------------------------


def test_importing_search_spaces_imports_no_heavy_framework() -> None:
    code = (
        "import sys, search_spaces\n"
        "heavy = [m for m in ('ray', 'optuna', 'tensorflow', 'keras', 'keras_tuner')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


# --- conditions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parameter", "operator", "value"),
    [
        ("unfreeze_blocks > 0", "unfreeze_blocks", ">", 0),
        ("unfreeze_blocks>=2", "unfreeze_blocks", ">=", 2),
        (" dropout < 0.25 ", "dropout", "<", 0.25),
        ("l2 <= 1e-3", "l2", "<=", 1e-3),
        ("pooling == 'avg'", "pooling", "==", "avg"),
        ('pooling != "flatten"', "pooling", "!=", "flatten"),
        ("pooling == avg", "pooling", "==", "avg"),
    ],
)
def test_condition_parse_and_str_round_trip(
    text: str, parameter: str, operator: str, value: Any
) -> None:
    condition = Condition.parse(text)
    assert (condition.parameter, condition.operator, condition.value) == (
        parameter,
        operator,
        value,
    )
    assert type(condition.value) is type(value)
    assert Condition.parse(str(condition)) == condition


def test_condition_str_is_the_readable_form() -> None:
    assert str(Condition.parse("unfreeze_blocks > 0")) == "unfreeze_blocks > 0"


@pytest.mark.parametrize(
    ("values", "expected"),
    [({"unfreeze_blocks": 0}, False), ({"unfreeze_blocks": 1}, True), ({}, False)],
)
def test_condition_holds_and_is_false_when_parameter_absent(
    values: dict[str, Any], expected: bool
) -> None:
    assert Condition.parse("unfreeze_blocks > 0").holds(values) is expected


def test_condition_every_operator() -> None:
    values = {"unfreeze_blocks": 2}
    results = {
        op: Condition("unfreeze_blocks", op, 2).holds(values)
        for op in (">", ">=", "<", "<=", "==", "!=")
    }
    assert results == {">": False, ">=": True, "<": False, "<=": True, "==": True, "!=": False}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "unfreeze_blocks",
        "unfreeze_blocks >> 0",
        "> 0",
        "1abc > 0",
        "unfreeze_blocks > 1 2",
        "unfreeze_blocks > nan",
        "pooling > 'avg'",
        "unfreeze_blocks = 0",
    ],
)
def test_condition_parse_rejects_malformed_text(text: str) -> None:
    with pytest.raises(SpaceError, match="condition"):
        Condition.parse(text)


# --- validation --------------------------------------------------------------------------

# Each case: the mapping, then fragments the message must contain (parameter, key, value).
INVALID_SPACES: dict[str, tuple[Any, list[str]]] = {
    "unknown parameter name": ({"dropuot": FLOAT}, ["'dropuot'", "dropout", "unfreeze_blocks"]),
    "unknown spec key": (
        {"dropout": {**FLOAT, "step": 0.1}},
        ["'dropout'", "'step'", "0.1", "allowed keys"],
    ),
    "unknown type": (
        {"dropout": {"type": "normal", "low": 0.1, "high": 0.5}},
        ["'dropout'", "'type'", "'normal'"],
    ),
    "missing type": ({"dropout": {"low": 0.1, "high": 0.5}}, ["'dropout'", "'type'"]),
    "missing low": ({"dropout": {"type": "float", "high": 0.5}}, ["'dropout'", "'low'"]),
    "missing high": (
        {"unfreeze_blocks": {"type": "int", "low": 0}},
        ["'unfreeze_blocks'", "'high'"],
    ),
    "missing choices": ({"dense_units": {"type": "categorical"}}, ["'dense_units'", "'choices'"]),
    "missing value": ({"l1": {"type": "fixed"}}, ["'l1'", "'value'"]),
    "low above high": (
        {"dropout": {"type": "float", "low": 0.6, "high": 0.2}},
        ["'dropout'", "'low'", "0.6", "0.2"],
    ),
    "int low above high": (
        {"unfreeze_blocks": {"type": "int", "low": 3, "high": 1}},
        ["'unfreeze_blocks'", "'low'", "3"],
    ),
    "log with zero low": (
        {"l2": {"type": "float", "low": 0.0, "high": 1e-2, "log": True}},
        ["'l2'", "'low'", "0.0", "log"],
    ),
    "log on int with zero low": (
        {"unfreeze_blocks": {"type": "int", "low": 0, "high": 3, "log": True}},
        ["'unfreeze_blocks'", "'low'", "0", "log"],
    ),
    "log on categorical": (
        {"dense_units": {"type": "categorical", "choices": [128, 256], "log": True}},
        ["'dense_units'", "'log'", "True"],
    ),
    "log not a boolean": (
        {"l2": {"type": "float", "low": 1e-6, "high": 1e-2, "log": "yes"}},
        ["'l2'", "'log'", "'yes'"],
    ),
    "int kind on a float hyperparameter": (
        {"dropout": {"type": "int", "low": 0, "high": 1}},
        ["'dropout'", "'type'", "'int'", "float hyperparameter"],
    ),
    "float kind on an int hyperparameter": (
        {"unfreeze_blocks": {"type": "float", "low": 0.0, "high": 3.0}},
        ["'unfreeze_blocks'", "'type'", "'float'", "int hyperparameter"],
    ),
    "float kind on a str hyperparameter": (
        {"pooling": {"type": "float", "low": 0.0, "high": 1.0}},
        ["'pooling'", "'type'", "'float'", "str hyperparameter"],
    ),
    "high beyond the hard limit": (
        {"dropout": {"type": "float", "low": 0.1, "high": 1.0}},
        ["'dropout'", "'high'", "1.0", "hard limits"],
    ),
    "low beyond the hard limit": (
        {"l2": {"type": "float", "low": -1.0, "high": 1e-2}},
        ["'l2'", "'low'", "-1.0", "hard limits"],
    ),
    "choice beyond the hard limit": (
        {"dense_units": {"type": "categorical", "choices": [0, 128]}},
        ["'dense_units'", "'choices'", "0", "hard limits"],
    ),
    "string choice not allowed": (
        {"pooling": {"type": "categorical", "choices": ["flatten", "max"]}},
        ["'pooling'", "'choices'", "'max'", "hard limits"],
    ),
    "fixed value beyond the hard limit": ({"dropout": 1.5}, ["'dropout'", "'value'", "1.5"]),
    "fixed spec value beyond the hard limit": (
        {"momentum": {"type": "fixed", "value": 1.0}},
        ["'momentum'", "'value'", "1.0", "hard limits"],
    ),
    "empty choices": (
        {"dense_units": {"type": "categorical", "choices": []}},
        ["'dense_units'", "'choices'", "()"],
    ),
    "choices not a list": (
        {"dense_units": {"type": "categorical", "choices": 128}},
        ["'dense_units'", "'choices'", "128"],
    ),
    "duplicate choices": (
        {"dense_units": {"type": "categorical", "choices": [128, 128]}},
        ["'dense_units'", "'choices'", "duplicates"],
    ),
    "condition on an unknown parameter": (
        {"finetune_learning_rate": {**FLOAT, "when": "unfreez_blocks > 0"}},
        ["'finetune_learning_rate'", "'when'", "unfreez_blocks > 0", "unknown parameter"],
    ),
    "condition on a parameter declared later": (
        {
            "finetune_learning_rate": {
                "type": "float",
                "low": 1e-5,
                "high": 1e-3,
                "when": "unfreeze_blocks > 0",
            },
            "unfreeze_blocks": {"type": "int", "low": 0, "high": 3},
        },
        ["'finetune_learning_rate'", "'when'", "unfreeze_blocks > 0", "declared after"],
    ),
    "condition on a parameter not in the space": (
        {"augmentation": {"type": "float", "low": 0.0, "high": 1.0, "when": "momentum > 0.5"}},
        ["'augmentation'", "'when'", "momentum > 0.5", "nowhere"],
    ),
    "condition on itself": (
        {"dropout": {**FLOAT, "when": "dropout > 0.2"}},
        ["'dropout'", "'when'", "dropout > 0.2", "itself"],
    ),
    "malformed condition": (
        {
            "unfreeze_blocks": {"type": "int", "low": 0, "high": 3},
            "augmentation": {
                "type": "float",
                "low": 0.0,
                "high": 1.0,
                "when": "unfreeze_blocks >> 0",
            },
        },
        ["'augmentation'", "'when'", "unfreeze_blocks >> 0"],
    ),
    "condition not a string": (
        {
            "unfreeze_blocks": {"type": "int", "low": 0, "high": 3},
            "augmentation": {"type": "float", "low": 0.0, "high": 1.0, "when": 3},
        },
        ["'augmentation'", "'when'", "3"],
    ),
    "condition comparing a string parameter with a number": (
        {
            "pooling": {"type": "categorical", "choices": ["flatten", "avg"]},
            "dropout": {**FLOAT, "when": "pooling == 1"},
        },
        ["'dropout'", "'when'", "pooling == 1", "string"],
    ),
    "condition comparing a number parameter with a string": (
        {
            "unfreeze_blocks": {"type": "int", "low": 0, "high": 3},
            "dropout": {**FLOAT, "when": "unfreeze_blocks == many"},
        },
        ["'dropout'", "'when'", "'many'", "number"],
    ),
    "boolean low": (
        {"unfreeze_blocks": {"type": "int", "low": True, "high": 3}},
        ["'unfreeze_blocks'", "'low'", "True", "integer"],
    ),
    "boolean float high": (
        {"dropout": {"type": "float", "low": 0.0, "high": True}},
        ["'dropout'", "'high'", "True", "number"],
    ),
    "boolean fixed value": ({"dropout": False}, ["'dropout'", "'value'", "False", "number"]),
    "boolean choices": (
        {"dense_units": {"type": "categorical", "choices": [True, 128]}},
        ["'dense_units'", "'choices'", "True", "integer"],
    ),
    "float bound on an int parameter": (
        {"unfreeze_blocks": {"type": "int", "low": 0, "high": 2.5}},
        ["'unfreeze_blocks'", "'high'", "2.5", "integer"],
    ),
    "numeric string on an int parameter": (
        {"unfreeze_blocks": {"type": "int", "low": 0, "high": "3"}},
        ["'unfreeze_blocks'", "'high'", "'3'", "integer"],
    ),
    "non-numeric string on a float parameter": (
        {"dropout": {"type": "float", "low": "low", "high": 0.5}},
        ["'dropout'", "'low'", "'low'", "number"],
    ),
    "not finite": (
        {"l2": {"type": "float", "low": 0.0, "high": float("inf")}},
        ["'l2'", "'high'", "inf", "finite"],
    ),
    "spec is null": ({"dropout": None}, ["'dropout'", "None"]),
    "spec is a list": ({"dense_units": [128, 256]}, ["'dense_units'", "[128, 256]"]),
    "key not used by the type": (
        {"dense_units": {"type": "categorical", "choices": [128], "low": 1}},
        ["'dense_units'", "'low'", "1", "not allowed"],
    ),
    "top level not a mapping": ([1, 2], ["expected a mapping", "[1, 2]"]),
}


@pytest.mark.parametrize(
    ("data", "fragments"), list(INVALID_SPACES.values()), ids=list(INVALID_SPACES)
)
def test_invalid_space_is_rejected_with_a_precise_message(data: Any, fragments: list[str]) -> None:
    with pytest.raises(SpaceError) as raised:
        space_from_mapping(data, source="spaces/bad.yaml")
    message = str(raised.value)
    assert message.startswith("spaces/bad.yaml: "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_unknown_parameter_message_lists_every_valid_name() -> None:
    with pytest.raises(SpaceError) as raised:
        space_from_mapping({"learning_rate": 0.1})
    for name in Hyperparameters.names():
        assert name in str(raised.value)


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(SpaceError, match="'high'.*hard limits"):
        Parameter("dropout", "float", low=0.0, high=1.0)
    with pytest.raises(SpaceError, match="declared twice"):
        SearchSpace((Parameter("l1", "fixed", value=0.0), Parameter("l1", "fixed", value=0.1)))
    with pytest.raises(SpaceError, match="expected a Parameter"):
        SearchSpace(("dropout",))  # type: ignore[arg-type]


def test_int_values_are_stored_as_floats_for_float_hyperparameters() -> None:
    space = space_from_mapping({"dropout": {"type": "float", "low": 0, "high": 0.5}, "l1": 0})
    dropout, l1 = space.get("dropout"), space.get("l1")
    assert dropout is not None and isinstance(dropout.low, float)
    assert l1 is not None and isinstance(l1.value, float)


def test_numeric_strings_are_read_as_floats_for_float_hyperparameters() -> None:
    space = space_from_mapping(
        {"finetune_learning_rate": {"type": "float", "low": "1e-5", "high": "1e-3", "log": True}}
    )
    parameter = space.get("finetune_learning_rate")
    assert parameter is not None
    assert (parameter.low, parameter.high) == (1e-5, 1e-3)


# --- loading -----------------------------------------------------------------------------


def test_yaml_file_loads_with_exponents_yaml_reads_as_strings(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(
        "dropout: {type: float, low: 0.1, high: 0.7}\n"
        "unfreeze_blocks: {type: int, low: 0, high: 2}\n"
        "finetune_learning_rate: {type: float, low: 1e-5, high: 1e-3, log: true,"
        " when: 'unfreeze_blocks > 0'}\n"
        "dense_units: {type: categorical, choices: [128, 256]}\n"
        "l1: 0.0\n",
        encoding="utf-8",
    )
    # The premise of accepting numeric strings: YAML 1.1 reads 1e-5 as a string.
    assert yaml.safe_load(path.read_text())["finetune_learning_rate"]["low"] == "1e-5"

    for source in (path, str(path)):
        space = load_space(source)
        assert space.names() == (
            "dropout",
            "unfreeze_blocks",
            "finetune_learning_rate",
            "dense_units",
            "l1",
        )
        finetune = space.get("finetune_learning_rate")
        assert finetune == Parameter(
            "finetune_learning_rate",
            "float",
            low=1e-5,
            high=1e-3,
            log=True,
            condition=Condition("unfreeze_blocks", ">", 0),
        )
        assert space.get("l1") == Parameter("l1", "fixed", value=0.0)


def test_invalid_yaml_file_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("dropout: {type: float, low: 0.1, high: 1.0}\n", encoding="utf-8")
    with pytest.raises(SpaceError) as raised:
        load_space(path)
    assert str(path) in str(raised.value)
    assert "'dropout'" in str(raised.value) and "'high'" in str(raised.value)


def test_unparsable_yaml_file_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("dropout: {type: float, low: [\n", encoding="utf-8")
    with pytest.raises(SpaceError, match="broken.yaml"):
        load_space(path)


def test_empty_yaml_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(SpaceError, match="empty.yaml.*expected a mapping"):
        load_space(path)


def test_unknown_preset_lists_the_presets(tmp_path: Path) -> None:
    with pytest.raises(SpaceError) as raised:
        load_space("no-such-preset")
    message = str(raised.value)
    assert "no-such-preset" in message
    for name in PRESETS:
        assert name in message
    with pytest.raises(SpaceError, match="head-only"):
        load_space(tmp_path / "missing.yaml")


def test_load_space_accepts_a_mapping() -> None:
    assert load_space({"l1": 0.0}).get("l1") == Parameter("l1", "fixed", value=0.0)


def test_default_preset_matches_the_recipe() -> None:
    space = load_space("default")
    assert set(space.names()) == {
        "dropout",
        "augmentation",
        "l2",
        "unfreeze_blocks",
        "head_learning_rate",
        "finetune_learning_rate",
        "dense_units",
    }
    assert space.get("dropout") == Parameter("dropout", "float", low=0.0, high=0.7)
    assert space.get("unfreeze_blocks") == Parameter("unfreeze_blocks", "int", low=0, high=3)
    fine_tuning = Condition("unfreeze_blocks", ">", 0)
    augmentation = space.get("augmentation")
    finetune = space.get("finetune_learning_rate")
    # Augmentation applies to head-only trials too (cached augmented views).
    assert augmentation is not None and augmentation.condition is None
    assert augmentation.choices == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert space.augmentation_levels() == [0.25, 0.5, 0.75, 1.0]
    assert finetune is not None and finetune.condition == fine_tuning and finetune.log
    l2 = space.get("l2")
    assert l2 is not None and (l2.low, l2.high, l2.log) == (1e-6, 1e-2, True)
    dense_units = space.get("dense_units")
    assert dense_units is not None and dense_units.choices == (128, 256, 512)


def test_a_continuous_augmentation_range_cannot_share_views() -> None:
    space = space_from_mapping({"augmentation": {"type": "float", "low": 0.0, "high": 1.0}})
    with pytest.raises(SpaceError, match="augmentation.*finite choice"):
        space.augmentation_levels()
    fixed = space_from_mapping({"augmentation": 0.3})
    assert fixed.augmentation_levels() == [0.3]
    assert space_from_mapping({"augmentation": 0.0}).augmentation_levels() == []


def test_head_only_preset_never_fine_tunes() -> None:
    space = load_space("head-only")
    assert space.get("unfreeze_blocks") == Parameter("unfreeze_blocks", "fixed", value=0)
    assert space.get("finetune_learning_rate") is None
    assert space.get("augmentation") is None
    assert space.unfreeze_block_values() == [0]
    assert not space.may_augment()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_to_dict_round_trips_through_yaml(preset: str) -> None:
    space = load_space(preset)
    assert space.to_dict() == PRESETS[preset]
    reread = space_from_mapping(yaml.safe_load(yaml.safe_dump(space.to_dict(), sort_keys=False)))
    assert reread == space
    assert reread.names() == space.names()


def test_to_dict_keeps_conditional_fixed_values_and_string_conditions() -> None:
    data = {
        "pooling": {"type": "categorical", "choices": ["flatten", "avg"]},
        "dropout": {"type": "fixed", "value": 0.3, "when": "pooling == 'avg'"},
        "l1": 0.0,
    }
    space = space_from_mapping(data)
    assert space.to_dict() == data
    assert space_from_mapping(space.to_dict()) == space


# --- queries -----------------------------------------------------------------------------


def test_values_grid() -> None:
    assert Parameter("unfreeze_blocks", "int", low=1, high=3).values_grid() == [1, 2, 3]
    assert Parameter("dense_units", "categorical", choices=(64, 32)).values_grid() == [64, 32]
    assert Parameter("pooling", "fixed", value="avg").values_grid() == ["avg"]
    assert Parameter("dropout", "float", low=0.0, high=0.5).values_grid() is None


def test_possible_values() -> None:
    space = space_from_mapping(
        {
            "unfreeze_blocks": {"type": "int", "low": 0, "high": 2},
            "dense_units": {
                "type": "categorical",
                "choices": [512, 128],
                "when": "unfreeze_blocks > 0",
            },
            "batch_size": {
                "type": "categorical",
                "choices": [8, 32],
                "when": "unfreeze_blocks >= 0",
            },
            "dropout": FLOAT,
        }
    )
    assert space.possible_values("unfreeze_blocks", 0) == [0, 1, 2]
    # Inactive when unfreeze_blocks == 0, so the default is possible too.
    assert space.possible_values("dense_units", 256) == [128, 256, 512]
    # Always active: the default never applies.
    assert space.possible_values("batch_size", 16) == [8, 32]
    assert space.possible_values("dropout", 0.5) is None
    assert space.possible_values("momentum", 0.9) == [0.9]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, [0]),
        ({"unfreeze_blocks": {"type": "int", "low": 1, "high": 4}}, [1, 2, 3, 4]),
        ({"unfreeze_blocks": {"type": "categorical", "choices": [3, 1]}}, [1, 3]),
        ({"unfreeze_blocks": 2}, [2]),
        (
            {
                "pooling": {"type": "categorical", "choices": ["flatten", "avg"]},
                "unfreeze_blocks": {"type": "int", "low": 2, "high": 3, "when": "pooling == avg"},
            },
            [0, 2, 3],
        ),
    ],
)
def test_unfreeze_block_values(data: dict[str, Any], expected: list[int]) -> None:
    assert space_from_mapping(data).unfreeze_block_values() == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, False),
        ({"augmentation": 0.0}, False),
        ({"augmentation": 0.5}, True),
        ({"augmentation": {"type": "float", "low": 0.0, "high": 0.0}}, False),
        ({"augmentation": {"type": "float", "low": 0.0, "high": 0.2}}, True),
        ({"augmentation": {"type": "categorical", "choices": [0.0]}}, False),
        ({"augmentation": {"type": "categorical", "choices": [0.0, 0.3]}}, True),
        (
            {
                "unfreeze_blocks": 0,
                "augmentation": {
                    "type": "float",
                    "low": 0.0,
                    "high": 1.0,
                    "when": "unfreeze_blocks > 0",
                },
            },
            False,
        ),
        (
            {
                "unfreeze_blocks": {"type": "int", "low": 0, "high": 1},
                "augmentation": {
                    "type": "float",
                    "low": 0.0,
                    "high": 1.0,
                    "when": "unfreeze_blocks > 0",
                },
            },
            True,
        ),
    ],
)
def test_may_augment(data: dict[str, Any], expected: bool) -> None:
    assert space_from_mapping(data).may_augment() is expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, {}),  # both absent: every trial is plain
        ({"augmentation": 0.5}, None),  # fixed above 0: no trial is plain
        ({"unfreeze_blocks": 1}, None),
        (
            {
                "augmentation": {"type": "categorical", "choices": [0.5, 0.0]},
                "unfreeze_blocks": {"type": "int", "low": 0, "high": 2},
            },
            {"augmentation": 0.0, "unfreeze_blocks": 0},
        ),
        ({"augmentation": {"type": "categorical", "choices": [0.25, 0.5]}}, None),
        ({"unfreeze_blocks": {"type": "int", "low": 1, "high": 2}}, None),
        ({"augmentation": {"type": "float", "low": 0.0, "high": 0.4}}, {"augmentation": 0.0}),
    ],
)
def test_plain_values(data: dict[str, Any], expected: dict[str, Any] | None) -> None:
    assert space_from_mapping(data).plain_values() == expected


def test_the_default_space_can_start_plain() -> None:
    values = load_space("default").plain_values()
    assert values == {"augmentation": 0.0, "unfreeze_blocks": 0}
    assert isinstance(values["augmentation"], float) and isinstance(values["unfreeze_blocks"], int)


def test_validate_for_backbone() -> None:
    space = load_space("default")
    space.validate_for_backbone(num_blocks=5, backbone="vgg16")
    space.validate_for_backbone(num_blocks=3, backbone="vgg16")
    with pytest.raises(SpaceError) as raised:
        space.validate_for_backbone(num_blocks=2, backbone="tiny-net")
    message = str(raised.value)
    assert "'unfreeze_blocks'" in message and "'high'" in message
    assert "tiny-net" in message and "2 blocks" in message and "value 3" in message
    load_space("head-only").validate_for_backbone(num_blocks=0, backbone="tiny-net")


# --- adapters ----------------------------------------------------------------------------


def test_to_optuna_skips_inactive_conditional_parameters() -> None:
    trials = _optuna_trials(load_space("default"), n_trials=60, seed=1)
    conditional = {"finetune_learning_rate"}
    head_only = [t for t in trials if t.params["unfreeze_blocks"] == 0]
    fine_tuned = [t for t in trials if t.params["unfreeze_blocks"] > 0]
    assert head_only and fine_tuned
    for trial in head_only:
        assert not conditional & set(trial.params), trial.params
    for trial in fine_tuned:
        assert conditional <= set(trial.params), trial.params


def test_to_optuna_with_a_fixed_trial_returns_the_constants() -> None:
    import optuna

    space = space_from_mapping(
        {
            "unfreeze_blocks": 2,
            "finetune_learning_rate": {
                "type": "float",
                "low": 1e-5,
                "high": 1e-3,
                "when": "unfreeze_blocks > 0",
            },
            "dropout": {"type": "float", "low": 0.1, "high": 0.5, "when": "unfreeze_blocks == 0"},
            "dense_units": {"type": "categorical", "choices": [128, 256]},
            "l1": 0.0,
        }
    )
    trial = optuna.trial.FixedTrial({"finetune_learning_rate": 2e-4, "dense_units": 256})
    constants = to_optuna(space)(trial)
    assert constants == {"unfreeze_blocks": 2, "l1": 0.0}
    # The fixed unfreeze_blocks=2 activates finetune_learning_rate and deactivates dropout.
    assert trial.params == {"finetune_learning_rate": 2e-4, "dense_units": 256}


def test_to_optuna_works_as_ray_optuna_search_space() -> None:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    space = space_from_mapping({**PRESETS["default"], "l1": 0.0})
    searcher = OptunaSearch(
        space=to_optuna(space),
        metric="accuracy",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    configs = []
    for index in range(30):
        config = searcher.suggest(f"trial_{index}")
        assert config is not None
        configs.append(config)
        searcher.on_trial_complete(f"trial_{index}", {"accuracy": 0.5})
    # OptunaSearch merges the returned constants into every config.
    assert all(config["l1"] == 0.0 for config in configs)
    assert {config["unfreeze_blocks"] for config in configs} == {0, 1, 2, 3}
    for config in configs:
        fine_tunes = config["unfreeze_blocks"] > 0
        assert ("finetune_learning_rate" in config) is fine_tunes
        assert "augmentation" in config


def test_bounds_are_inclusive_in_optuna_and_ray_tune() -> None:
    space = space_from_mapping(
        {
            "unfreeze_blocks": {"type": "int", "low": 0, "high": 3},
            "dense_units": {"type": "int", "low": 1, "high": 4, "log": True},
            "dropout": {"type": "float", "low": 0.1, "high": 0.3},
            "l2": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
        }
    )
    draws = 2000
    config = to_ray_tune(space)
    ray_samples = {name: list(config[name].sample(size=draws)) for name in space.names()}
    trials = _optuna_trials(space, n_trials=400, seed=0)
    optuna_samples = {name: [t.params[name] for t in trials] for name in space.names()}

    for samples in (ray_samples, optuna_samples):
        assert (min(samples["unfreeze_blocks"]), max(samples["unfreeze_blocks"])) == (0, 3)
        assert (min(samples["dense_units"]), max(samples["dense_units"])) == (1, 4)
        assert all(0.1 <= value <= 0.3 for value in samples["dropout"])
        assert all(1e-6 <= value <= 1e-2 for value in samples["l2"])
        # Log sampling puts about half the draws below the geometric mean 1e-4.
        below = sum(value < 1e-4 for value in samples["l2"]) / len(samples["l2"])
        assert 0.35 < below < 0.65


def test_to_ray_tune_domains() -> None:
    from ray import tune
    from ray.tune.search.sample import Categorical, Float, Integer

    config = to_ray_tune(load_space("default"))
    assert isinstance(config["dense_units"], Categorical)
    assert config["dense_units"].categories == [128, 256, 512]
    assert isinstance(config["unfreeze_blocks"], Integer)
    assert (config["unfreeze_blocks"].lower, config["unfreeze_blocks"].upper) == (0, 4)
    assert isinstance(config["l2"], Float)
    assert isinstance(config["l2"].get_sampler(), type(tune.loguniform(1e-3, 1e-2).get_sampler()))
    # Conditions cannot be expressed in Ray Tune: the conditional parameter is always there.
    assert isinstance(config["finetune_learning_rate"], Float)
    assert to_ray_tune(load_space("head-only"))["unfreeze_blocks"] == 0


def test_to_keras_tuner() -> None:
    import keras_tuner as kt

    space = load_space("default")
    hp = kt.HyperParameters()
    values = to_keras_tuner(space, hp)
    # Every parameter is declared; with unfreeze_blocks at its default 0 the
    # conditional ones are inactive and absent from the result.
    assert [h.name for h in hp.space] == list(space.names())
    assert set(values) == {
        "dropout",
        "l2",
        "unfreeze_blocks",
        "augmentation",
        "head_learning_rate",
        "dense_units",
    }
    by_name = {h.name: h for h in hp.space}
    assert isinstance(by_name["l2"], kt.engine.hyperparameters.Float)
    assert (by_name["l2"].min_value, by_name["l2"].max_value) == (1e-6, 1e-2)
    assert by_name["l2"].sampling == "log"
    assert by_name["dropout"].sampling == "linear"
    assert isinstance(by_name["unfreeze_blocks"], kt.engine.hyperparameters.Int)
    assert (by_name["unfreeze_blocks"].min_value, by_name["unfreeze_blocks"].max_value) == (0, 3)
    assert list(by_name["dense_units"].values) == [128, 256, 512]
    assert list(by_name["augmentation"].values) == [0.0, 0.25, 0.5, 0.75, 1.0]
    conditions = by_name["finetune_learning_rate"].conditions
    assert [c.get_config()["values"] for c in conditions] == [[1, 2, 3]]

    fine_tuning = kt.HyperParameters()
    fine_tuning.values["unfreeze_blocks"] = 2
    values = to_keras_tuner(space, fine_tuning)
    assert values["unfreeze_blocks"] == 2
    assert values["finetune_learning_rate"] == pytest.approx(1e-5)
    assert "augmentation" in values


def test_to_keras_tuner_nests_conditions_and_declares_fixed_values() -> None:
    import keras_tuner as kt

    space = space_from_mapping(
        {
            "unfreeze_blocks": {"type": "int", "low": 0, "high": 3},
            "dense_units": {
                "type": "categorical",
                "choices": [128, 256],
                "when": "unfreeze_blocks > 1",
            },
            "batch_size": {"type": "categorical", "choices": [8, 32], "when": "dense_units == 256"},
            "l1": 0.0,
            "momentum": {"type": "fixed", "value": 0.5, "when": "l1 > 0"},
        }
    )
    hp = kt.HyperParameters()
    hp.values.update(unfreeze_blocks=2, dense_units=256)
    values = to_keras_tuner(space, hp)
    assert values == {"unfreeze_blocks": 2, "dense_units": 256, "batch_size": 8, "l1": 0.0}
    # momentum can never be active (l1 is fixed at 0), so it is not declared.
    assert "momentum" not in [h.name for h in hp.space]

    inactive = kt.HyperParameters()
    inactive.values.update(unfreeze_blocks=2, dense_units=128)
    assert set(to_keras_tuner(space, inactive)) == {"unfreeze_blocks", "dense_units", "l1"}


def test_to_keras_tuner_rejects_conditions_on_float_ranges() -> None:
    import keras_tuner as kt

    space = space_from_mapping(
        {
            "dropout": FLOAT,
            "dense_units": {"type": "categorical", "choices": [128], "when": "dropout > 0.2"},
        }
    )
    with pytest.raises(SpaceError, match="'dense_units'.*'when'.*dropout > 0.2.*float range"):
        to_keras_tuner(space, kt.HyperParameters())


def test_optuna_define_by_run_survives_pickling() -> None:
    """Ray's OptunaSearch pickles its space when it checkpoints the searcher."""
    import pickle

    import optuna

    space = load_space("default")
    restored = pickle.loads(pickle.dumps(to_optuna(space)))
    trial = optuna.trial.FixedTrial(
        {
            "dropout": 0.3,
            "l2": 1e-4,
            "unfreeze_blocks": 0,
            "augmentation": 0.5,
            "head_learning_rate": 1e-3,
            "dense_units": 256,
        }
    )
    assert restored(trial) == to_optuna(space)(trial)


def test_recipe_preset_is_the_write_ups_advice() -> None:
    space = load_space("recipe")
    assert space.unfreeze_block_values() == [0, 1, 2]
    assert space.augmentation_levels() == [0.5, 1.0]
    dropout = space.get("dropout")
    assert dropout is not None and dropout.low == 0.2
