"""Cost-aware ASHA and reused trial processes, with a real Ray Tune on tiny images.

One Tuner runs a head-only trial and a trial that fine-tunes two blocks, one
after the other in one trial process (``reuse_actors``), under ASHA counting
cost (``core.cost``). The test reads where ASHA recorded each trial from the
scheduler's own rungs and from the trials' reports as Ray Tune wrote them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from core.cost import epoch_costs
from search_spaces import load_space
from tuning.config import load_config
from tuning.trainable import STARTUP_STEPS
from tuning.tuner import make_scheduler, make_trainable

pytestmark = pytest.mark.integration

SPACE = """
unfreeze_blocks: {type: int, low: 0, high: 2}
augmentation: 0.0
dense_units: 16
batch_size: 8
"""


def reports(trial_dir: Path) -> list[dict[str, Any]]:
    lines = (trial_dir / "result.json").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_asha_on_cost_judges_a_deep_trial_after_fewer_epochs_in_a_reused_process(
    shapes_data: Path, tmp_path: Path, local_ray: None
) -> None:
    from ray import tune

    from cluster import share_features
    from core.data import scan_dataset
    from core.features import FeatureCache

    space_file = tmp_path / "space.yaml"
    space_file.write_text(SPACE)
    config = load_config(
        overrides={
            "weights": "none", "image_size": 32, "max_epochs": 4, "head_epochs": 1,
            "grace_period": 3, "reduction_factor": 2, "asha_time_attr": "cost",
            "cpus_per_trial": 1, "cache_dir": str(tmp_path / "cache"),
            "space": str(space_file), "seed": 0,
        }
    )  # fmt: skip
    space = load_space(str(space_file))
    bundle = FeatureCache(config.cache_location).ensure(
        scan_dataset(shapes_data), config.feature_request(space), progress=False
    )
    scheduler = make_scheduler(config, space)  # costs counted in a CPU-only subprocess
    costs = epoch_costs("vgg16", 32)
    setup = config.training_setup()
    # max_t is the cost of the dearest trial's max_epochs, so it cuts no trial short.
    assert scheduler._max_t == pytest.approx(costs.max_cost(setup, [0, 1, 2]), abs=1)
    tuner = tune.Tuner(
        make_trainable(config, share_features(bundle)),
        param_space={"unfreeze_blocks": tune.grid_search([0, 2]), "dense_units": 16,
                     "batch_size": 8},
        tune_config=tune.TuneConfig(
            metric="val_accuracy", mode="max", scheduler=scheduler, reuse_actors=True,
            max_concurrent_trials=1,
        ),
        run_config=tune.RunConfig(name="asha", storage_path=str(tmp_path / "trials"), verbose=0),
    )  # fmt: skip
    grid = tuner.fit()
    results = {int(r.config["unfreeze_blocks"]): r for r in (grid[i] for i in range(len(grid)))}
    runs = {depth: reports(Path(r.path)) for depth, r in results.items()}

    # Both trials ran all their epochs: the deep one's cost went far past
    # max_epochs without max_t stopping it.
    assert {depth: [line["epoch"] for line in lines] for depth, lines in runs.items()} == {
        0: [1, 2, 3, 4],
        2: [1, 2, 3, 4],
    }
    assert [line["cost"] for line in runs[0]] == [1.0, 2.0, 3.0, 4.0]
    deep_cost = [line["cost"] for line in runs[2]]
    assert deep_cost[0] == 1.0 and deep_cost[1] == pytest.approx(1.0 + costs.phase_two[2])
    assert deep_cost[-1] > setup.epochs * 100

    # Where ASHA recorded each trial: the scheduler's rungs, highest first.
    rungs = scheduler._brackets[0]._rungs
    milestones = sorted(milestone for milestone, _ in rungs)
    assert milestones[0] == 3
    recorded = {trial_id: milestone for milestone, trials in rungs for trial_id in trials}
    ids = {depth: r.metrics["trial_id"] for depth, r in results.items()}
    assert recorded[ids[0]] == 3  # the head-only trial: its first rung after 3 epochs
    assert recorded[ids[2]] > setup.epochs  # the deep trial: a rung no head-only trial reaches

    def epochs_to_first_rung(lines: list[dict[str, Any]]) -> int:
        return next(line["epoch"] for line in lines if line["cost"] >= milestones[0])

    assert epochs_to_first_rung(runs[2]) == 2 < epochs_to_first_rung(runs[0]) == 3

    # One process ran both trials; the second found TensorFlow configured with
    # the same thread counts, and said what its start-up took.
    first = [lines[0] for lines in runs.values()]
    assert len({line["pid"] for line in first}) == 1, "the trial process was not reused"
    assert sorted(line["process_trial"] for line in first) == [1, 2]
    for line in first:
        assert (line["intra_op_threads"], line["inter_op_threads"]) == (1, 1)
        assert all(line[f"startup_{step}_s"] >= 0 for step in STARTUP_STEPS)
        assert line["rss_mb"] > 0
    later = next(line for line in first if line["process_trial"] == 2)
    assert later["startup_process_s"] == 0.0  # no new process to wait for
    assert all("startup_total_s" not in line for lines in runs.values() for line in lines[1:])
