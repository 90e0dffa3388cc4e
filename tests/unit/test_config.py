"""Unit tests for tuning.config: defaults, presets, --set overrides and their errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from core.backbones import get_backbone
from search_spaces import load_space
from tuning.config import (
    CONFIGS_DIR,
    FLAT_KEYS,
    GROUPS,
    RUNTIME_KEYS,
    ConfigError,
    SearchConfig,
    load_config,
    parse_overrides,
    resolve_config_path,
    write_config,
)
from tuning.samplers import SAMPLER_NAMES

REPO_ROOT = Path(__file__).resolve().parents[2]
PRESET_FILES = sorted((REPO_ROOT / "configs").glob("*.yaml"))
VGG16_MIN = get_backbone("vgg16").min_image_size


def check_like_cli(config: SearchConfig) -> None:
    """What ``bottletune check-config`` validates beyond the config itself."""
    space = load_space(config.searcher.space)
    spec = get_backbone(config.features.backbone)
    space.validate_for_backbone(spec.num_blocks, spec.name)


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# Defaults and presets


def test_defaults_are_valid() -> None:
    config = SearchConfig()

    assert load_config() == config
    assert tuple(config.to_dict()) == FLAT_KEYS
    assert config.searcher.sampler in SAMPLER_NAMES
    assert config.features.image_size >= get_backbone(config.features.backbone).min_image_size
    check_like_cli(config)


def test_config_is_frozen_and_replace_validates() -> None:
    config = SearchConfig()

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 3  # type: ignore[misc]
    assert config.replace(seed=3).seed == 3
    assert config.seed == 0
    with pytest.raises(ConfigError, match="num_samples=0"):
        config.replace(num_samples=0)


def test_configs_directory_is_the_package_presets_directory() -> None:
    assert CONFIGS_DIR.resolve() == (REPO_ROOT / "configs").resolve()
    assert PRESET_FILES, "configs/ holds no presets"


@pytest.mark.parametrize("preset", PRESET_FILES, ids=lambda path: path.stem)
def test_every_preset_loads_and_passes_check_config(preset: Path) -> None:
    by_path = load_config(preset)
    by_name = load_config(preset.stem)

    assert by_path == by_name
    # Every key the file sets reaches the config (none silently dropped).
    data = yaml.safe_load(preset.read_text())
    assert isinstance(data, dict) and data
    for key, value in data.items():
        assert by_path.to_dict()[key] == value, key
    check_like_cli(by_path)


def test_preset_lookup_by_name_and_by_path(tmp_path: Path) -> None:
    assert resolve_config_path("demo") == CONFIGS_DIR / "demo.yaml"
    own = write_yaml(tmp_path / "mine.yaml", "image_size: 64\n")
    assert resolve_config_path(own) == own
    assert resolve_config_path(str(own)) == own
    assert load_config(str(own)).features.image_size == 64


def test_unknown_preset_lists_the_presets() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_config_path("no-such-preset")

    message = str(caught.value)
    assert "no-such-preset" in message
    for preset in PRESET_FILES:
        assert preset.stem in message


# Unknown keys and types


def test_unknown_key_in_yaml_file_names_file_and_key(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "typo.yaml", "image_size: 64\nbatchsize: 8\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    message = str(caught.value)
    assert str(path) in message
    assert "'batchsize'" in message


def test_unknown_set_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"--set: unknown key 'nope'"):
        load_config(overrides=parse_overrides(["nope=1"]))


def test_set_without_equals_sign_is_rejected() -> None:
    with pytest.raises(ConfigError, match="seed"):
        parse_overrides(["seed"])


@pytest.mark.parametrize(
    ("pair", "fragment"),
    [
        ("num_samples=abc", "num_samples='abc'"),
        ("image_size=12.5", "image_size=12.5"),
        ("include_dashboard=maybe", "include_dashboard='maybe'"),
        ("num_samples=true", "num_samples=True"),
        ("cpus_per_trial=many", "cpus_per_trial='many'"),
    ],
)
def test_set_values_are_type_checked(pair: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=parse_overrides([pair]))

    assert fragment in str(caught.value)
    assert "expected" in str(caught.value)


def test_numeric_strings_are_accepted_for_float_keys(tmp_path: Path) -> None:
    # YAML 1.1 reads 1e-3 (no dot) as a string; float keys take it anyway.
    assert parse_overrides(["time_budget_s=1e-3"]) == {"time_budget_s": "1e-3"}
    config = load_config(overrides=parse_overrides(["time_budget_s=1e-3"]))
    assert config.schedule.time_budget_s == pytest.approx(0.001)
    assert isinstance(config.schedule.time_budget_s, float)

    path = write_yaml(tmp_path / "fraction.yaml", "validation_fraction: 1e-1\n")
    assert load_config(path).features.validation_fraction == pytest.approx(0.1)


def test_whole_numbers_convert_between_int_and_float_keys() -> None:
    config = load_config(overrides=parse_overrides(["cpus_per_trial=2", "image_size=64.0"]))

    cpus, size = config.resources.cpus_per_trial, config.features.image_size
    assert cpus == 2.0 and isinstance(cpus, float)
    assert size == 64 and isinstance(size, int)


def test_later_sources_override_earlier_ones(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "base.yaml", "image_size: 64\nseed: 1\n")

    config = load_config(path, parse_overrides(["seed=7"]))

    assert (config.features.image_size, config.seed) == (64, 7)


# Bad values


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"image_size": VGG16_MIN - 1}, f"image_size={VGG16_MIN - 1}"),
        ({"max_epochs": 4, "grace_period": 5}, "grace_period=5"),
        ({"sampler": "nope"}, "sampler='nope'"),
        ({"gpus_per_trial": 1.5}, "gpus_per_trial=1.5"),
        ({"cpus_per_trial": 0}, "cpus_per_trial=0"),
        ({"validation_fraction": 1}, "validation_fraction=1"),
        ({"backbone": "resnet"}, "backbone='resnet'"),
    ],
    ids=["image_size", "grace_period", "sampler", "gpus", "cpus", "validation", "backbone"],
)
def test_bad_values_are_rejected_naming_key_and_value(
    overrides: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=overrides)

    assert fragment in str(caught.value)


def test_backbone_minimum_image_size_is_accepted() -> None:
    assert load_config(overrides={"image_size": VGG16_MIN}).features.image_size == VGG16_MIN


def test_whole_gpu_counts_above_one_are_allowed() -> None:
    assert load_config(overrides={"gpus_per_trial": 2}).resources.gpus_per_trial == 2.0
    assert load_config(overrides={"gpus_per_trial": 0.25}).resources.gpus_per_trial == 0.25


def test_bad_value_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad.yaml", "image_size: 8\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(path) in str(caught.value)
    assert "image_size=8" in str(caught.value)


# Malformed files


@pytest.mark.parametrize("text", ["- image_size\n- 48\n", "48\n", "just a sentence\n"])
def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path: Path, text: str) -> None:
    path = write_yaml(tmp_path / "list.yaml", text)

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(path) in str(caught.value)
    assert "mapping" in str(caught.value)


def test_invalid_yaml_file_is_rejected_naming_the_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "broken.yaml", "image_size: [48\nseed: 1\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(path) in str(caught.value)
    assert "not valid YAML" in str(caught.value)


def test_empty_yaml_file_gives_the_defaults(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "empty.yaml", "# nothing set\n")

    assert load_config(path) == SearchConfig()


# Round trip


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {
            "weights": "none",
            "image_size": 48,
            "num_samples": 3,
            "sampler": "random",
            "cpus_per_trial": 0.5,
            "gpus_per_trial": 0.25,
            "time_budget_s": 1e-5,
            "cache_dir": "~/my cache/bottletune",
            "space": "head-only",
            "validation_fraction": 0.3,
            "include_dashboard": False,
            "dashboard_host": "0.0.0.0",
            "max_failures": -1,
        },
        {"weights": "/models/vgg16 weights.h5", "dashboard_port": 9000, "seed": 123},
    ],
    ids=["defaults", "many", "weights-file"],
)
def test_write_config_round_trips(tmp_path: Path, overrides: dict[str, object]) -> None:
    config = load_config(overrides=overrides)
    path = tmp_path / "config.yaml"

    write_config(config, path)

    assert load_config(path) == config
    written = yaml.safe_load(path.read_text())
    assert tuple(written) == FLAT_KEYS


def test_a_space_file_named_in_a_config_is_found_next_to_it(tmp_path: Path) -> None:
    folder = tmp_path / "experiment"
    folder.mkdir()
    (folder / "narrow.yaml").write_text("dropout: {type: float, low: 0.1, high: 0.2}\n")
    (folder / "search.yaml").write_text("space: narrow.yaml\n")
    config = load_config(folder / "search.yaml")
    assert config.searcher.space == str((folder / "narrow.yaml").resolve())
    assert load_space(config.searcher.space).names() == ("dropout",)


@pytest.mark.parametrize("key", ["cache_dir", "storage_path"])
def test_credentials_in_a_uri_are_refused_without_echoing_them(key: str) -> None:
    with pytest.raises(ConfigError, match=f"{key}: credentials") as caught:
        load_config(overrides={key: "s3://AKIDEXAMPLE:s3cr3t@bucket/prefix"})
    assert "s3cr3t" not in str(caught.value)
    assert load_config(overrides={key: "s3://bucket/prefix"}).to_dict()[key] == "s3://bucket/prefix"


# Groups


def test_every_flat_key_sits_in_exactly_one_group() -> None:
    config = load_config(overrides={"image_size": 64, "grace_period": 2, "storage_path": "/s"})

    assert (config.features.image_size, config.asha.grace_period) == (64, 2)
    assert config.storage.storage_path == "/s"
    grouped = [
        field.name for group in GROUPS for field in dataclasses.fields(getattr(config, group))
    ]
    assert sorted(["seed", *grouped]) == sorted(FLAT_KEYS)
    assert len(grouped) == len(set(grouped))


def test_the_keys_a_resume_may_change_are_the_runtime_groups() -> None:
    assert {
        "cache_dir",
        "extraction_batch_size",
        "include_dashboard",
        "dashboard_host",
        "dashboard_port",
        "object_store_memory",
    } == RUNTIME_KEYS


def test_the_old_batch_size_key_reads_as_the_extraction_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_yaml(tmp_path / "old.yaml", "batch_size: 8\n")

    with caplog.at_level("WARNING", logger="tuning.config"):
        config = load_config(path)

    assert config.extraction.extraction_batch_size == 8
    assert str(path) in caplog.text and "extraction_batch_size" in caplog.text
    assert "batch_size" not in config.to_dict()


def test_the_feature_request_follows_the_config_and_the_space() -> None:
    config = load_config(
        overrides={"image_size": 64, "augmentation_views": 3, "extraction_batch_size": 4}
    )
    space = load_space(
        {
            "unfreeze_blocks": {"type": "int", "low": 0, "high": 2},
            "augmentation": {"type": "categorical", "choices": [0.0, 0.5]},
        }
    )

    request = config.feature_request(space)

    assert request.cuts == ("block5_pool", "block4_pool", "block3_pool")
    assert request.augmentations == (0.5,)
    assert (request.image_size, request.views, request.dtype) == (64, 3, "float16")
    assert (request.seed, request.extraction_batch_size) == (0, 4)
