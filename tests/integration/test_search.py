"""Real searches: real Ray, real Keras training, small synthetic images, weights none."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from core.features import FeatureCache, FeatureRequest
from search_spaces import SpaceError
from tuning.config import SearchConfig, load_config
from tuning.run_dir import RunDirError, SearchSummary
from tuning.search import run_search
from tuning.trainable import REUSE_WAIT_S
from tuning.tuner import FIRST_TRIAL_ATTR

pytestmark = pytest.mark.integration

# Depths 0-2 and one augmentation strength: three cuts (block5, block4, block3),
# each plain; the plan stores VIEWS augmented views of the training images at
# the top two (unfreeze 2 augments fresh: core/plan.py, FRESH_COST_LIMIT).
SPACE = """
dropout: {type: float, low: 0.0, high: 0.6}
l2: {type: float, low: 1.0e-6, high: 1.0e-3, log: true}
unfreeze_blocks: {type: int, low: 0, high: 2}
head_learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
finetune_learning_rate:
  {type: float, low: 1.0e-5, high: 1.0e-3, log: true, when: "unfreeze_blocks > 0"}
augmentation: {type: categorical, choices: [0.0, 0.5]}
dense_units: {type: categorical, choices: [16, 32]}
"""
CUTS = ["block3_pool", "block4_pool", "block5_pool"]
VIEW_CUTS = ["block4_pool", "block5_pool"]
VIEWS = 2


def small_config(tmp_path: Path, **overrides: object) -> SearchConfig:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    values: dict[str, object] = {
        "weights": "none",
        "image_size": 32,
        "num_samples": 4,
        "max_epochs": 3,
        "head_epochs": 1,
        "grace_period": 1,
        "reduction_factor": 2,
        "max_concurrent_trials": 2,
        "cpus_per_trial": 1,
        "gpus_per_trial": 0.5,
        "include_dashboard": False,
        "cache_dir": str(tmp_path / "cache"),
        "space": str(space),
        "augmentation_views": VIEWS,
        "seed": 3,
    }
    values.update(overrides)
    return load_config(overrides=values)


def trial_pids(trial_dir: Path) -> set[int]:
    """The processes a trial reported from (Ray Tune's result.json)."""
    lines = (trial_dir / "result.json").read_text().splitlines()
    return {json.loads(line)["pid"] for line in lines if line.strip()}


def first_report(trial_dir: Path) -> dict[str, Any]:
    """The first line of a trial's result.json: it carries the trial's start-up and process."""
    return dict(json.loads((trial_dir / "result.json").read_text().splitlines()[0]))


def wait_until_exited(pids: set[int], timeout_s: float = 30.0) -> bool:
    """Whether every process in ``pids`` has exited within the timeout (Ray reaps actors async)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() for pid in pids):
            return True
        time.sleep(0.2)
    return False


def test_search_computes_features_once_and_a_second_search_reuses_them(
    local_ray: None, shapes_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna
    import ray
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from core import runtime

    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
    interpreters: list[str] = []
    fresh_interpreter = runtime.FreshInterpreter

    def counted(*args: Any, **kwargs: Any) -> Any:
        interpreters.append(kwargs["what"])
        return fresh_interpreter(*args, **kwargs)

    monkeypatch.setattr(runtime, "FreshInterpreter", counted)
    config = small_config(tmp_path)
    first = run_search(config, shapes_data, tmp_path / "run1", progress=False)
    # On a cold cache the builder actor probed the backbone for the plan: no
    # second process imported TensorFlow beside it.
    assert interpreters == []

    cache = FeatureCache(config.cache_location)
    built = sorted(((b["cut"], b["augmentation"], b["view"]) for b in cache.builds()), key=str)
    plain = [(cut, 0.0, None) for cut in CUTS]
    views = [(cut, 0.5, view) for cut in VIEW_CUTS for view in range(VIEWS)]
    assert built == sorted(plain + views, key=str), "each entry is extracted exactly once"
    assert len(first.cache.misses) == len(built) and not first.cache.hits
    # The builder actor, holding a share of a (fake) GPU, built the plain entries
    # and then the views, while trials ran; the driver built nothing.
    built_by = json.loads((tmp_path / "run1" / "results.json").read_text())["cache"]["built_by"]
    assert built_by["pid"] != os.getpid() and built_by["gpu_ids"]
    assert {b["pid"] for b in cache.builds()} == {built_by["pid"]}
    # The plan was printed and kept, and it is what was built.
    plan = json.loads((tmp_path / "run1" / "cache_plan.json").read_text())
    assert plan["totals"]["bytes_to_build"] > 0 and plan["views_per_strength"] == VIEWS
    fresh = [(e["cut"], e["strength"]) for e in plan["entries"] if e["source"] == "fresh"]
    assert fresh == [("block3_pool", 0.5)]
    assert plan["seconds_per_image"] > 0, "the builder's probe was not timed"

    # Every trial reported, and every trial (including those ASHA stopped) was
    # told to the Optuna study with its value, so the sampler learns from it.
    assert len(first.trials) == 4
    assert all(trial.val_accuracy is not None for trial in first.trials)
    study = optuna.load_study(
        study_name="bottletune",
        storage=JournalStorage(JournalFileBackend(str(tmp_path / "run1" / "optuna.journal"))),
    )
    assert len(study.trials) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    # first_trial: plain (the default): Tune's first trial needed only the top cut.
    opening_trial = study.trials[0]
    assert opening_trial.user_attrs[FIRST_TRIAL_ATTR] == "plain"
    assert (opening_trial.params["augmentation"], opening_trial.params["unfreeze_blocks"]) == (0, 0)
    assert not any(FIRST_TRIAL_ATTR in t.user_attrs for t in study.trials[1:])
    assert sorted(t.value for t in study.trials) == sorted(
        trial.val_accuracy for trial in first.trials
    )
    stopped = [t for t in first.trials if t.status == "stopped_early"]
    assert all(t.epochs < config.schedule.max_epochs for t in stopped)
    # Ray Tune reused trial processes (reuse_actors): the trials of one process
    # ran one after another, with the process's TensorFlow threads, each after
    # the one before it had freed its models (stopped by ASHA or not). Once the
    # search ended, every trial process was gone, its TensorFlow and GPU memory too.
    pids = {trial.trial_id: trial_pids(Path(trial.path)) for trial in first.trials}
    assert all(len(p) == 1 for p in pids.values()), pids
    by_process: dict[int, list[dict[str, Any]]] = {}
    for trial in first.trials:
        (pid,) = pids[trial.trial_id]
        by_process.setdefault(pid, []).append(first_report(Path(trial.path)))
    assert len(by_process) < len(first.trials), "no trial process ran a second trial"
    for reports in by_process.values():
        order = sorted(report["process_trial"] for report in reports)
        assert order == list(range(1, len(reports) + 1)), "trials overlapped in one process"
        for report in reports:
            assert (report["intra_op_threads"], report["inter_op_threads"]) == (1, 1)
            assert ("previous_close_s" in report) == (report["process_trial"] > 1)
            # Ray Tune waits this long for a trial to end before reusing its process.
            assert report["reuse_wait_s"] == float(REUSE_WAIT_S) > 2
    assert wait_until_exited(set(by_process)), "a trial process lives on"
    depths = {t.hyperparameters.unfreeze_blocks for t in first.trials}
    assert depths <= {0, 1, 2}
    # Augmented and plain trials both trained, on the same shared entries.
    strengths = {t.hyperparameters.augmentation for t in first.trials}
    assert strengths == {0.0, 0.5}

    # Each trial checkpointed every epoch; the newest checkpoint is its last epoch.
    for trial in first.trials:
        checkpoints = sorted(Path(trial.path).glob("checkpoint_*"))
        assert checkpoints, f"trial {trial.trial_id} wrote no checkpoint"
        state = json.loads((checkpoints[-1] / "state.json").read_text())
        assert state["epoch"] == trial.epochs
        assert (checkpoints[-1] / "head.weights.h5").is_file()

    results = json.loads((tmp_path / "run1" / "results.json").read_text())
    assert results["best_trial_id"] == first.best.trial_id
    assert SearchSummary.read(tmp_path / "run1") == first.summary
    assert results == first.summary.to_dict()
    assert (tmp_path / "run1" / "config.yaml").is_file()
    assert load_config(tmp_path / "run1" / "config.yaml") == config

    second = run_search(
        config.replace(num_samples=2), shapes_data, tmp_path / "run2", progress=False
    )
    assert len(cache.builds()) == len(built), "the second search recomputed features or views"
    assert len(second.cache.hits) == len(built) and not second.cache.misses
    # With nothing to build there is no builder: the plan's probe ran in a fresh interpreter.
    assert len(interpreters) == 1 and interpreters[0].startswith("profiling")

    # Views the plan keeps below the top cut, gone from the cache: the plan asks for
    # them, and a builder started after it (not the driver) builds them again.
    lost = [
        b["name"] for b in cache.builds() if b["cut"] == "block4_pool" and b["view"] is not None
    ]
    assert len(lost) == VIEWS
    for name in lost:
        cache.store.discard(name)
    third = run_search(
        config.replace(num_samples=1), shapes_data, tmp_path / "run3", progress=False
    )
    rebuilt = cache.builds()[len(built) :]
    assert sorted(b["name"] for b in rebuilt) == sorted(lost)
    assert os.getpid() not in {b["pid"] for b in rebuilt}, "the driver built features"
    assert sorted(third.cache.misses) == sorted(lost)


def test_impossible_requests_fail_before_any_trial_runs(
    local_ray: None, shapes_data: Path, tmp_path: Path
) -> None:
    # Two fake GPUs in the fixture: a trial asking for three can never be placed.
    with pytest.raises(ValueError, match="gpus_per_trial=3"):
        run_search(
            small_config(tmp_path, gpus_per_trial=3.0), shapes_data, tmp_path / "a", progress=False
        )
    assert not (tmp_path / "a").exists(), "a refused search left a run directory behind"

    deep = tmp_path / "deep.yaml"
    deep.write_text("unfreeze_blocks: {type: int, low: 0, high: 6}\n")
    with pytest.raises(SpaceError, match="unfreeze_blocks"):
        run_search(
            small_config(tmp_path, space=str(deep)), shapes_data, tmp_path / "b", progress=False
        )
    assert not (tmp_path / "b").exists()

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not empty"):
        run_search(small_config(tmp_path), shapes_data, occupied, progress=False)
    assert (occupied / "notes.txt").read_text() == "mine"


def test_a_builder_that_fails_stops_the_search_with_its_error(
    local_ray: None, shapes_data: Path, tmp_path: Path
) -> None:
    """Trials start while the plain pass runs: its failure must end the search, named."""
    from cluster.extraction import ExtractionError

    # The plan and the trials' head-only model never read the weights; the builder does.
    weights = tmp_path / "damaged.weights.h5"
    weights.write_bytes(b"not an HDF5 file")
    config = small_config(tmp_path, weights=str(weights), num_samples=12, max_failures=3)
    with pytest.raises(ExtractionError, match="damaged.weights.h5"):
        run_search(config, shapes_data, tmp_path / "run", progress=False)
    # Stopped at the first failure, not after every trial had failed and been retried.
    started = list((tmp_path / "run" / "trials").glob("trial_*"))
    assert len(started) < config.schedule.num_samples, started
    assert not (tmp_path / "run" / "results.json").exists()


def test_plain_features_built_where_the_driver_cannot_see_them_are_warned_about(
    local_ray: None, shapes_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A builder on another node wrote to a cache this node does not see: say so."""
    import ray

    from cluster.extraction import ExtractionOutcome, FeatureBuild
    from core.data import scan_dataset
    from tuning.run_dir import BuildSite
    from tuning.search import finish_build

    config = small_config(tmp_path)  # its cache directory is empty here
    request = FeatureRequest(backbone="vgg16", weights="none", image_size=32, cuts=("block5_pool",))
    outcome = ray.put(ExtractionOutcome(pid=4242, node="10.0.0.9", gpu_ids=("0",)))
    build = FeatureBuild(outcome=outcome, calls=[outcome])
    with caplog.at_level("WARNING", logger="tuning.search"):
        site = finish_build(config, scan_dataset(shapes_data), request, build)
    assert site == BuildSite(pid=4242, node="10.0.0.9", gpu_ids=["0"])
    assert "not shared between the nodes" in caplog.text and "10.0.0.9" in caplog.text


def test_a_search_that_ends_before_its_plain_pass_does_not_wait_for_it(
    local_ray: None, shapes_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A search cut short (time_budget_s) finishes without the plain pass, and says so."""
    import ray

    from cluster.extraction import FeatureBuild
    from core.data import scan_dataset
    from tuning.search import finish_build

    release = tmp_path / "release"

    @ray.remote(num_cpus=0)
    def plain_pass() -> None:  # stands for a plain pass still running
        while not release.exists():
            time.sleep(0.05)

    outcome = plain_pass.remote()
    build = FeatureBuild(outcome=outcome, calls=[outcome])
    config = small_config(tmp_path)
    request = FeatureRequest(backbone="vgg16", weights="none", image_size=32, cuts=("block5_pool",))
    try:
        with caplog.at_level("WARNING", logger="tuning.search"):
            # It returns while the pass cannot end: the file it waits for is made after.
            assert finish_build(config, scan_dataset(shapes_data), request, build) is None
        assert "ended before its plain features were built" in caplog.text
    finally:
        release.touch()
    ray.get(outcome)


@pytest.fixture
def ray_worker_reads_features() -> Any:
    """A Ray task (its own worker process) that fetches one cut as a trial would."""
    import ray

    @ray.remote(num_cpus=1)
    def read(shared: Any, cut: str) -> tuple[bool, bool, float]:
        features = shared.fetch([cut]).cuts[cut]["train"]
        return bool(features.flags.writeable), bool(features.flags.owndata), float(features.sum())

    return read


def test_trials_fetch_only_their_own_entries_zero_copy(
    local_ray: None,
    shapes_data: Path,
    tmp_path: Path,
    ray_worker_reads_features: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import numpy as np
    import ray

    from cluster import object_store, share_features
    from core.data import scan_dataset
    from core.hyperparameters import Hyperparameters
    from core.training import entries_for

    request = FeatureRequest(
        backbone="vgg16", weights="none", image_size=32, cuts=("block5_pool", "block4_pool"),
        augmentations=(0.5,), views=2,
    )  # fmt: skip
    bundle = FeatureCache(tmp_path / "cache").ensure(
        scan_dataset(shapes_data), request, progress=False
    )
    shared = share_features(bundle)
    augmented = shared.fetch(
        *entries_for(Hyperparameters(unfreeze_blocks=1, augmentation=0.5), "vgg16")
    )
    assert set(augmented.cuts) == {"block5_pool", "block4_pool"}
    assert set(augmented.views) == {"block5_pool@0.5", "block4_pool@0.5"}
    head_only = shared.fetch(*entries_for(Hyperparameters(), "vgg16"))
    assert set(head_only.cuts) == {"block5_pool"} and not head_only.views
    # Read-only arrays straight from the object store's shared memory, not copies.
    features = augmented.cuts["block4_pool"]["train"]
    assert not features.flags.writeable and not features.flags.owndata
    np.testing.assert_array_equal(features, bundle.cuts["block4_pool"]["train"])
    assert len(augmented.views["block4_pool@0.5"]) == 2
    # In another process too (a trial's worker): read-only views of the store.
    writeable, owndata, total = ray.get(ray_worker_reads_features.remote(shared, "block4_pool"))
    assert not writeable and not owndata
    assert total == pytest.approx(float(features.sum()))

    # Features beyond this node's object store are shared anyway, with a warning.
    assert object_store.local_object_store_bytes() == 200 * 1024 * 1024  # the fixture's
    monkeypatch.setattr(object_store, "local_object_store_bytes", lambda: bundle.nbytes - 1)
    with caplog.at_level("WARNING", logger="cluster.object_store"):
        share_features(bundle)
    assert "exceed this node's object store" in caplog.text


def test_a_node_without_the_data_builds_from_images_the_driver_sends(
    local_ray: None, shapes_data: Path, tmp_path: Path
) -> None:
    import dataclasses

    import numpy as np
    import ray

    from cluster import connect
    from cluster.extraction import FeatureBuilder
    from core.data import scan_dataset
    from search_spaces import load_space

    config = small_config(tmp_path)
    request = config.feature_request(load_space(config.searcher.space))
    info = connect(None)

    # The builder's node finds nothing at the data's path: the driver must send it.
    scanned = scan_dataset(shapes_data, config.features.validation_fraction, config.seed)
    index = dataclasses.replace(scanned, root=tmp_path / "not-on-this-node")
    builder = FeatureBuilder.start(config.cache_location, index, request, info, gpus_per_trial=0.5)
    assert builder is not None
    build = builder.build(
        request, validation_fraction=config.features.validation_fraction, seed=config.seed,
        progress=False,
    )  # fmt: skip
    assert len(build.stats.misses) == len(CUTS) * (1 + VIEWS) and not build.stats.hits
    assert set(build.cuts) == set(CUTS) and set(build.views) == {f"{c}@0.5" for c in CUTS}
    outcome = build.site()
    assert outcome is not None and outcome.pid != os.getpid() and outcome.gpu_ids
    assert len(outcome.stats.misses) == len(CUTS)
    assert build.failure() is None

    sent = FeatureCache(config.cache_location).ensure(scanned, request, progress=False)
    read = FeatureCache(tmp_path / "from-disk").ensure(scanned, request, progress=False)
    labels = ray.get(build.labels)
    for split in ("train", "validation"):
        np.testing.assert_array_equal(labels[split], read.labels[split])
    for cut in ("block5_pool", "block3_pool"):
        # What the trials fetch is what the cache holds, and what the files give.
        np.testing.assert_array_equal(ray.get(build.cuts[cut])["validation"],
                                      read.features(cut, "validation"))  # fmt: skip
        np.testing.assert_array_equal(
            sent.features(cut, "validation"), read.features(cut, "validation")
        )
        for view in range(VIEWS):  # augmented views are the same from sent images too
            np.testing.assert_array_equal(
                sent.views_of(cut, 0.5)[view], read.views_of(cut, 0.5)[view]
            )
    assert FeatureBuilder.start(config.cache_location, index, request, info,
                                gpus_per_trial=0.5) is None  # fmt: skip


def test_entries_are_built_while_trials_run_and_each_is_waited_for_alone(
    local_ray: None, shapes_data: Path, tmp_path: Path
) -> None:
    """The builder returns at once; each reference resolves to its cached entry."""
    import dataclasses

    import numpy as np
    import ray

    from cluster import connect, share_features
    from cluster.extraction import FeatureBuilder
    from core.data import scan_dataset
    from core.hyperparameters import Hyperparameters

    config = small_config(tmp_path)
    request = FeatureRequest(
        backbone="vgg16", weights="none", image_size=32, cuts=("block5_pool", "block4_pool"),
        augmentations=(0.25, 0.5), views=VIEWS,
    )  # fmt: skip
    index = scan_dataset(shapes_data, config.features.validation_fraction, config.seed)
    builder = FeatureBuilder.start(
        config.cache_location, index, request, connect(None), gpus_per_trial=0.5
    )
    assert builder is not None
    build = builder.build(
        request, validation_fraction=config.features.validation_fraction, seed=config.seed,
        first=(0.5,), progress=False,
    )  # fmt: skip
    # The plain pass first, then what the first trials ask for; the other strengths follow.
    assert build.order == (0.5, 0.25) and len(build.stats.misses) == 2 + 2 * 2 * VIEWS
    assert set(build.views) == {f"{c}@{s}" for c in request.cuts for s in (0.25, 0.5)}
    # Returned before the actor (a new process importing TensorFlow) built anything.
    pending = [build.outcome, *build.cuts.values(), *build.views.values()]
    ready, _ = ray.wait(pending, num_returns=len(pending), timeout=0)
    assert not ready
    shared = share_features(FeatureCache(config.cache_location).ensure(
        index, dataclasses.replace(request, augmentations=()), plain=False, progress=False
    ), pending=build)  # fmt: skip
    fetched = shared.fetch_for(Hyperparameters(unfreeze_blocks=1, augmentation=0.5))
    cached = FeatureCache(config.cache_location).ensure(index, request, progress=False)
    assert set(fetched.cuts) == {"block5_pool", "block4_pool"}
    assert set(fetched.views) == {"block5_pool@0.5", "block4_pool@0.5"}
    for split in ("train", "validation"):
        np.testing.assert_array_equal(fetched.labels[split], cached.labels[split])
        np.testing.assert_array_equal(
            fetched.cuts["block4_pool"][split], cached.cuts["block4_pool"][split]
        )
    for name, views in fetched.views.items():
        assert len(views) == VIEWS
        for got, expected in zip(views, cached.views[name], strict=True):
            np.testing.assert_array_equal(got, expected)
