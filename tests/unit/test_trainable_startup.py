"""Trial processes that run many trials: TensorFlow's settings and memory stay as they were.

Each check runs in a fresh interpreter, as a Ray trial process is one, since
TensorFlow fixes its thread pools (and GPUs) once per process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True, text=True, timeout=900, check=False, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_configuring_tensorflow_again_is_a_no_op_and_other_values_are_refused() -> None:
    code = (
        "import json\n"
        "from core.runtime import TensorFlowSettingsError, configure_tensorflow,"
        " tensorflow_threads\n"
        "configure_tensorflow(1)\n"
        "import tensorflow as tf\n"
        "tf.constant(1.0) + 1.0\n"  # the pools are fixed from here on
        "configure_tensorflow(1)\n"  # a second trial in the same process
        "same = tensorflow_threads()\n"
        "try:\n"
        "    configure_tensorflow(2)\n"
        "    refused = ''\n"
        "except TensorFlowSettingsError as error:\n"
        "    refused = str(error)\n"
        "print(json.dumps({'same': same, 'after': tensorflow_threads(), 'refused': refused}))\n"
    )
    outcome = json.loads(run_python(code))
    assert outcome["same"] == [1, 1]
    assert outcome["after"] == [1, 1]
    assert "threads=2" in outcome["refused"] and "(1, 1)" in outcome["refused"]


RSS_TRIALS = 20
RSS_SCRIPT = """
import json, sys
from core.runtime import configure_tensorflow
configure_tensorflow(1)
from core.data import scan_dataset
from core.features import FeatureCache, FeatureRequest
from core.hyperparameters import Hyperparameters, TrainingSetup
from core.training import RecipeTrainer
from tuning.trainable import resident_memory_mb

data, cache, trials = sys.argv[1], sys.argv[2], int(sys.argv[3])
request = FeatureRequest(backbone="vgg16", weights="none", image_size=32,
                         cuts=("block5_pool", "block4_pool"), augmentations=(), views=1, seed=0)
bundle = FeatureCache(cache).ensure(scan_dataset(data), request, progress=False)
setup = TrainingSetup("vgg16", "none", 32, epochs=2, head_epochs=1, seed=0)
rss = []
for number in range(trials):
    # Every other trial fine-tunes a block: it builds the backbone and a second model.
    hparams = Hyperparameters(unfreeze_blocks=number % 2, dense_units=16, batch_size=8)
    trainer = RecipeTrainer(hparams, setup, bundle)
    while not trainer.done:
        trainer.train_epoch()
    trainer.close()  # as recipe_trainable does at the end of every trial
    del trainer
    rss.append(resident_memory_mb())
print(json.dumps(rss))
"""


@pytest.mark.integration
def test_twenty_trials_in_one_process_do_not_grow_its_memory(
    shapes_data: Path, tmp_path: Path
) -> None:
    rss = json.loads(
        run_python(RSS_SCRIPT, str(shapes_data), str(tmp_path / "cache"), str(RSS_TRIALS))
    )
    assert len(rss) == RSS_TRIALS
    # The first trial of each kind loads kernels and allocator pools once. After
    # that, resident memory swings by up to 150 MB from trial to trial (CI saw
    # 920-1068 MB) as the allocator keeps and returns arenas, but its floor does
    # not move: every 4 to 6 trials it came back to 919-921 MB. A leak of one trial's
    # models (VGG16's top block at 32 px alone is 28 MB of weights, with momentum
    # 56 MB; without close() each fine-tuning trial kept about 75 MB) raises the
    # floor by that much per fine-tuning trial: about 375 MB over the 10 trials
    # between the two windows. The bound allows the floor's noise, not one model.
    early, late = rss[2:10], rss[-8:]
    growth = min(late) - min(early)
    assert growth < 40, (
        f"resident memory's floor grew by {growth:.0f} MB from trials 3-10 to the last 8: {rss}"
    )


CLOSE_SCRIPT = """
import gc, json, sys
from core.runtime import configure_tensorflow
configure_tensorflow(1)
from core.data import scan_dataset
from core.features import FeatureCache, FeatureRequest
from core.hyperparameters import Hyperparameters, TrainingSetup
from core.training import RecipeTrainer, custom_gradient_names
from tensorflow.python.framework.func_graph import FuncGraph

def traced_graphs():
    gc.collect()
    return sum(isinstance(o, FuncGraph) for o in gc.get_objects())

data, cache = sys.argv[1], sys.argv[2]
request = FeatureRequest(backbone="vgg16", weights="none", image_size=32,
                         cuts=("block5_pool", "block4_pool"), augmentations=(), views=1, seed=0)
bundle = FeatureCache(cache).ensure(scan_dataset(data), request, progress=False)
setup = TrainingSetup("vgg16", "none", 32, epochs=2, head_epochs=1, seed=0)
before = {"graphs": traced_graphs(), "gradients": len(custom_gradient_names())}
trainer = RecipeTrainer(Hyperparameters(unfreeze_blocks=1, dense_units=16, batch_size=8),
                        setup, bundle)
while not trainer.done:
    trainer.train_epoch()
trained = {"graphs": traced_graphs(), "gradients": len(custom_gradient_names())}
trainer.close()
trainer.close()  # a second close does nothing
try:
    trainer.train_epoch()
    refused = ""
except RuntimeError as error:
    refused = str(error)
history = len(trainer.history)
del trainer
after = {"graphs": traced_graphs(), "gradients": len(custom_gradient_names())}
print(json.dumps({"before": before, "trained": trained, "after": after,
                  "refused": refused, "history": history}))
"""


@pytest.mark.integration
def test_a_closed_trainer_leaves_none_of_its_traced_training_steps_behind(
    shapes_data: Path, tmp_path: Path
) -> None:
    outcome = json.loads(run_python(CLOSE_SCRIPT, str(shapes_data), str(tmp_path / "cache")))
    # Training traced steps for both phases, and registered their gradients
    # (Keras' optimizer, see core.training.forget_custom_gradients) ...
    assert outcome["trained"]["graphs"] > outcome["before"]["graphs"]
    assert outcome["trained"]["gradients"] > outcome["before"]["gradients"]
    # ... and nothing of them survives the trainer: no graph holds its variables.
    assert outcome["after"] == outcome["before"]
    assert "closed" in outcome["refused"]
    assert outcome["history"] == 2
