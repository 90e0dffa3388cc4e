"""The cache plan: sizes from the real backbone's shapes, the budget's give-up order, errors."""

from __future__ import annotations

import json

import pytest

from cli.main import main
from core.data import scan_dataset
from core.features import FeatureCache
from core.plan import (
    BUDGET_SHARE_OF_STORE,
    CachePlan,
    PlanError,
    parse_bytes,
    plan_cache,
    plan_for,
    profile_backbone,
    resolve_budget,
)
from search_spaces import load_space
from tuning.config import ConfigError, SearchConfig, load_config
from tuning.search import needs_builder

GB = 10**9


@pytest.fixture(scope="module")
def vgg16_150():
    return profile_backbone("vgg16", 150)


def default_request(**changes):
    config = SearchConfig().replace(**changes) if changes else SearchConfig()
    return config.feature_request(load_space(config.searcher.space))


def test_flops_match_vgg16s_published_count():
    # VGG16's conv base is 15.35 G multiply-adds at 224 px.
    profile = profile_backbone("vgg16", 224)
    assert profile.flops_per_image == pytest.approx(2 * 15.35e9, rel=0.02)
    shares = [cut.frozen_share for cut in profile.cuts]
    assert shares == sorted(shares) and shares[-1] == 1.0


def test_defaults_fit_a_16_gb_object_store_at_the_recipes_size(vgg16_150, tmp_path):
    """150 px, 2000 training and 800 validation images, the default space and config."""
    request = default_request()
    store = 16 * GB
    budget, source = resolve_budget("auto", store)
    plan = plan_cache(
        request,
        vgg16_150,
        train_images=2000,
        validation_images=800,
        budget_bytes=budget,
        budget_source=source,
        object_store_bytes=store,
    )
    assert budget == int(store * BUDGET_SHARE_OF_STORE)
    assert plan.nbytes <= budget < store
    # Views at every cut would want 41 GB (bench/entry_sizes.py); unfreeze 2 and 3
    # augment fresh, which stores nothing, so all 8 views fit at the top two cuts.
    assert plan.views_per_strength == 8 and plan.nbytes < 8.5 * GB
    assert {cut for cut, _ in plan.fresh} == {"block3_pool", "block2_pool"}
    # Nothing the space searches is dropped: every strength at every cut has a source.
    strengths = {(e.cut, e.strength) for e in plan.entries if e.strength}
    assert strengths == {(c, s) for c in request.cuts for s in request.augmentations}
    assert plan.views_per_strength >= 2
    text = "\n".join(plan.lines())
    assert "16.00 GB object store" in text and "WARNING" not in text


def test_each_choice_is_one_line_in_the_give_up_order(vgg16_150):
    request = default_request()
    plain = 2800 * sum(vgg16_150.cut(cut).values for cut in request.cuts) * 2

    def fitted(budget):
        return plan_cache(
            request, vgg16_150, train_images=2000, validation_images=800, budget_bytes=budget
        )

    roomy = fitted(10**15)
    # Unfreeze 2 and 3 augment fresh by choice: their frozen layers are cheap enough.
    assert set(roomy.fresh) == {
        (cut, s) for cut in ("block3_pool", "block2_pool") for s in request.augmentations
    }
    assert roomy.views_per_strength == 8 and len(roomy.choices) == 2
    tight = fitted(plain + GB)
    lines = tight.choices
    assert lines[0].startswith("block3_pool: fresh") and "~55%" in lines[0]
    assert lines[1].startswith("block2_pool: fresh") and "~16%" in lines[1]
    assert lines[2].startswith("views per strength 8 -> 4")
    assert lines[3].startswith("views per strength 4 -> 2")
    assert lines[4].startswith("block4_pool: fresh")  # the only cut left below the top
    assert tight.nbytes <= plain + GB
    tightest = fitted(plain + tight.images_nbytes + 10**6)
    assert tightest.choices[-1].startswith("block5_pool: fresh")
    assert tightest.view_cuts == () and tightest.nbytes <= plain + tight.images_nbytes + 10**6


def test_a_budget_below_the_plain_top_cut_names_the_key_and_the_bytes(vgg16_150):
    needed = 2800 * vgg16_150.cut("block5_pool").values * 2
    with pytest.raises(PlanError, match=rf"cache_memory_budget.*block5_pool.*needs {needed} bytes"):
        plan_cache(
            default_request(),
            vgg16_150,
            train_images=2000,
            validation_images=800,
            budget_bytes=needed - 1,
        )


def test_a_plan_larger_than_the_free_disk_is_refused_with_both_numbers(vgg16_150):
    with pytest.raises(PlanError, match=r"writes \d+ bytes .* has 1000000 bytes .* free"):
        plan_cache(
            default_request(),
            vgg16_150,
            train_images=2000,
            validation_images=800,
            budget_bytes=100 * GB,
            disk_free=10**6,
        )


def test_sizes_in_the_config_key():
    assert parse_bytes("12GB") == 12 * GB
    assert parse_bytes("500 MiB") == 500 * 2**20
    assert parse_bytes("1.2e10") == 12 * GB
    assert load_config(overrides={"cache_memory_budget": 12_000_000_000}).features
    with pytest.raises(ConfigError, match="cache_memory_budget='lots'"):
        load_config(overrides={"cache_memory_budget": "lots"})
    with pytest.raises(ConfigError, match="fresh_cost_limit=-0.5"):
        load_config(overrides={"fresh_cost_limit": -0.5})
    with pytest.raises(PlanError, match="cache_memory_budget=auto: the object store's size"):
        resolve_budget("auto", 0)


def test_plan_knows_the_cache_and_narrows_the_request(shapes_data, tmp_path):
    config = SearchConfig().replace(
        weights="none", image_size=32, augmentation_views=2, cache_dir=str(tmp_path / "cache")
    )
    request = config.feature_request(load_space("default"))
    index = scan_dataset(shapes_data, config.features.validation_fraction, config.seed)
    cold = plan_for(
        request,
        index,
        budget="1GB",
        cache_location=config.cache_location,
        object_store_bytes=2 * GB,
        probe=False,
    )
    assert cold.bytes_to_build == cold.disk_bytes > 0
    assert needs_builder(config, index, request)
    narrowed = cold.request(request)
    assert narrowed.view_cuts == ("block5_pool", "block4_pool")
    cache = FeatureCache(config.cache_location)
    keys = cache.keys_for(index, narrowed)
    assert not any(key.is_view and key.cut == "block2_pool" for key in keys)
    assert len([key for key in keys if key.is_view]) == 2 * 4 * len(narrowed.view_cuts)
    cache.ensure(index, narrowed, progress=False)
    warm = plan_for(
        request,
        index,
        budget="1GB",
        cache_location=config.cache_location,
        object_store_bytes=2 * GB,
        probe=False,
    )
    assert warm.bytes_to_build == 0 and all(
        e.to_build == 0 for e in warm.entries if e.source != "fresh"
    )
    assert CachePlan.from_dict(json.loads(json.dumps(warm.to_dict()))) == warm
    # The views it augments fresh stay missing for good: a search starts no builder for them.
    assert cache.missing(index, request) and not needs_builder(config, index, request)


def test_cache_plan_command_prints_json_without_building(shapes_data, tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    status = main(
        [
            "cache",
            "plan",
            "--data",
            str(shapes_data),
            "--set",
            "weights=none",
            "--set",
            "image_size=32",
            "--set",
            "cache_memory_budget=1GB",
            "--set",
            "fresh_cost_limit=0.25",
            "--cache-dir",
            str(cache_dir),
            "--json",
        ]
    )
    assert status == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["budget_bytes"] == GB and plan["seconds_per_image"] > 0
    assert plan["totals"]["bytes_to_build"] > 0
    # fresh_cost_limit=0.25: only unfreeze 3 (+16%) augments fresh; unfreeze 2 keeps views.
    fresh = {e["cut"] for e in plan["entries"] if e["source"] == "fresh"}
    assert fresh == {"block2_pool"}
    assert not (cache_dir / "entries").exists()
