"""Resident memory of a node running 1, 2 and 4 concurrent trials on shared features.

Method. For each trial count N, a fresh local Ray (``num_cpus`` >= N, an object
store big enough for the features) runs N concurrent Ray Tune trials on one
``FeatureBundle`` shared as ``run_search`` shares it: one object-store object
per entry (``cluster.share_features``), fetched by each trial
(``SharedFeatures.fetch``; here every trial fetches every entry, the worst
case); the driver drops its own copy once the entries are in the store.

Each trial first becomes an idle trial: TensorFlow imported, bottletune's
trainer run for an epoch on a tiny private array; it records its private
memory (USS) then, before it fetches the shared features (so a copy made by
the fetch would count). It then trains a head epoch on the shared top cut and reads
every cut in mini-batches (what a trial at that depth reads per epoch), so
every page of the features is touched, records its pid and waits.

While all N wait, the driver reads, for every process of the node (the
driver and every process it started: GCS, raylet with the object store,
workers), the proportional set size (PSS) of the object store's shared-memory
mapping (``psutil`` ``memory_maps``). PSS splits each shared page between the
processes that map it, so summed over the node every object-store page counts
once, however many trials map it.

Feature memory of N trials = object-store PSS summed over the node + the growth
of each trial's private memory (USS, outside the object store) over its own idle
baseline. Measuring the baseline in the same process removes the variance of
TensorFlow's own memory between processes (hundreds of MB here), which would
otherwise swamp the features. Target: feature memory at 4 trials <= 1.3 x that
at 1 trial. The node's total PSS is reported beside it.

The features are random arrays with the exact shapes of VGG16's cuts (memory
does not depend on their values), so the benchmark runs at the recipe's 150 px
without extracting anything.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    IMG_DIR,
    add_output_flags,
    load_average,
    machine_info,
    machine_line,
    markdown_table,
    mb,
    non_negative_int,
    positive_int,
    setup_logging,
    text_table,
    update_doc_section,
    write_results,
)

logger = logging.getLogger(__name__)

TARGET = 1.3
VGG16_CHANNELS = {
    "block1_pool": 64,
    "block2_pool": 128,
    "block3_pool": 256,
    "block4_pool": 512,
    "block5_pool": 512,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memory",
        description="Node memory with 1, 2 and 4 concurrent trials sharing features.",
    )
    parser.add_argument("--size", type=positive_int, default=150, help="image side in px")
    parser.add_argument("--train", type=positive_int, default=1000, help="training images")
    parser.add_argument("--validation", type=positive_int, default=400, help="validation images")
    parser.add_argument("--cuts", nargs="+", default=["block5_pool", "block4_pool", "block3_pool"])
    parser.add_argument(
        "--views", type=non_negative_int, default=1, help="augmented views per cut (one strength)"
    )
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16"])
    parser.add_argument("--trials", type=positive_int, nargs="+", default=[1, 2, 4])
    add_output_flags(parser, "memory")
    return parser.parse_args(argv)


def cut_shape(cut: str, size: int) -> tuple[int, int, int]:
    """VGG16's output shape at a block end: each pool halves (rounding down)."""
    block = int(cut[len("block")])
    side = size
    for _ in range(block):
        side //= 2
    return side, side, VGG16_CHANNELS[cut]


def random_bundle(
    cuts: list[str], size: int, n_train: int, n_validation: int, views: int, dtype: str
) -> Any:
    from core.features import FeatureBundle, view_name

    rng = np.random.default_rng(0)

    def array(count: int, cut: str) -> np.ndarray:
        values = np.empty((count, *cut_shape(cut, size)), dtype=dtype)
        for start in range(0, count, 64):
            chunk = values[start : start + 64]
            chunk[...] = rng.random(chunk.shape, dtype="float32")
        return values

    labels = {
        "train": (np.arange(n_train) % 2).astype("int32"),
        "validation": (np.arange(n_validation) % 2).astype("int32"),
    }
    bundle = FeatureBundle("vgg16", size, ("a", "b"), labels)
    for cut in cuts:
        bundle.cuts[cut] = {"train": array(n_train, cut), "validation": array(n_validation, cut)}
        if views:
            bundle.views[view_name(cut, 0.5)] = tuple(array(n_train, cut) for _ in range(views))
    return bundle


def bundle_bytes(args: argparse.Namespace, dtype: str) -> int:
    """Bytes of the features ``random_bundle`` makes for these settings."""
    width = np.dtype(dtype).itemsize
    per_image = sum(int(np.prod(cut_shape(cut, args.size))) for cut in args.cuts) * width
    return per_image * (args.train * (1 + args.views) + args.validation)


def memory_trial(config: dict[str, Any], features: Any) -> None:
    """One trial: warm up TensorFlow, then train a head epoch on and read every shared cut.

    The trial's private memory (USS) is measured twice in its own process: when
    it is an idle trial (TensorFlow imported, a head trained on a tiny private
    array) and after it has used the shared features. The difference is what
    the features cost this process beyond the per-process baseline.
    """
    import gc
    import json
    import os

    import psutil
    from ray import tune

    from core.runtime import configure_tensorflow

    configure_tensorflow(1)
    from core.hyperparameters import Hyperparameters, TrainingSetup
    from core.training import RecipeTrainer, array_batches

    process = psutil.Process()
    setup = TrainingSetup("vgg16", "none", features.image_size, epochs=1, head_epochs=1, seed=0)
    hparams = Hyperparameters(unfreeze_blocks=0, batch_size=32)
    top = next(iter(features.cuts))
    tiny = random_bundle([top], features.image_size, 64, 32, 0, config["dtype"])
    RecipeTrainer(hparams, setup, tiny).train_epoch()
    del tiny
    gc.collect()
    # The baseline comes before the fetch, so that a copy the fetch made (instead
    # of mapping the object store zero-copy) would count as feature memory.
    idle = process.memory_full_info()
    bundle = features.fetch(list(features.cuts), list(features.views))
    RecipeTrainer(hparams, setup, bundle).train_epoch()
    touched = 0
    arrays = [a for split in bundle.cuts.values() for a in split.values()]
    arrays += [a for views in bundle.views.values() for a in views]
    for values in arrays:
        labels = np.zeros(len(values), "int32")
        for x, _ in array_batches(values, labels, 32, shuffle=True, seed=0):
            touched += x.nbytes
    gc.collect()
    sync = Path(config["sync"])
    record = {"pid": os.getpid(), "idle_uss": idle.uss, "touched": touched}
    (sync / f"{config['index']}.json").write_text(json.dumps(record))
    deadline = time.monotonic() + 600
    while not (sync / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    tune.report({"touched_bytes": touched})


def pss(pid: int) -> int:
    import psutil

    try:
        return int(psutil.Process(pid).memory_full_info().pss)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def breakdown(pid: int) -> dict[str, int]:
    """PSS and USS of one process, and the part of each in the object store's mapping."""
    import psutil

    try:
        process = psutil.Process(pid)
        full = process.memory_full_info()
        maps = process.memory_maps(grouped=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return {"pss": 0, "uss": 0, "store_pss": 0, "store_private": 0}
    store = [m for m in maps if "plasma" in m.path or m.path.startswith("/dev/shm")]
    return {
        "pss": int(full.pss),
        "uss": int(full.uss),
        "store_pss": int(sum(m.pss for m in store)),
        "store_private": int(sum(m.private_clean + m.private_dirty for m in store)),
    }


def private(parts: dict[str, int]) -> int:
    """Memory only this process holds, outside the object store's mapping."""
    return parts["uss"] - parts["store_private"]


def node_pids() -> list[int]:
    """The driver and every process it started (Ray's GCS, raylet, workers)."""
    import os

    import psutil

    me = psutil.Process(os.getpid())
    return [me.pid, *(child.pid for child in me.children(recursive=True))]


def measure(
    trials: int, make_bundle: Callable[[], Any], object_store: int, temp_root: Path
) -> dict[str, Any]:
    """Runs ``trials`` concurrent trials on a new bundle and sums PSS while they all wait.

    The bundle is made here and dropped once it is in the object store, as
    ``run_search`` drops its own (whose arrays are memory-mapped cache files).
    """
    import json
    import os

    import ray
    from ray import tune

    from cluster import share_features, share_with_trials

    driver_start = private(breakdown(os.getpid()))
    ray.init(
        num_cpus=max(4, trials),
        object_store_memory=object_store,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=str(temp_root / "ray"),
    )
    sync = Path(tempfile.mkdtemp(prefix="sync-", dir=temp_root))
    try:
        bundle = make_bundle()
        features_bytes = bundle.nbytes
        dtype = str(next(iter(bundle.cuts.values()))["train"].dtype)
        trainable = tune.with_resources(
            share_with_trials(memory_trial, features=share_features(bundle)), {"cpu": 1}
        )
        del bundle  # the object store holds it now, as in run_search
        tuner = tune.Tuner(
            trainable,
            param_space={
                "index": tune.grid_search(list(range(trials))),
                "sync": str(sync),
                "dtype": dtype,
            },
            tune_config=tune.TuneConfig(max_concurrent_trials=trials),
            run_config=tune.RunConfig(
                storage_path=str(temp_root / "tune"), verbose=0, name=f"memory-{trials}"
            ),
        )
        errors: list[BaseException] = []

        def fit() -> None:
            try:
                tuner.fit()
            except BaseException as error:  # reported by the driver thread
                errors.append(error)

        runner = threading.Thread(target=fit, daemon=True)
        runner.start()
        deadline = time.monotonic() + 900
        while len(list(sync.glob("*.json"))) < trials:
            if errors or not runner.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"trials did not all start: {errors}")
            time.sleep(0.5)
        time.sleep(2.0)  # let the last trial settle after writing its pid
        records = [json.loads(p.read_text()) for p in sync.glob("*.json")]
        per_trial = [breakdown(r["pid"]) | {"idle_uss": r["idle_uss"]} for r in records]
        node = {pid: breakdown(pid) for pid in node_pids()}
        driver = node[os.getpid()]
        (sync / "release").write_text("")
        runner.join(timeout=300)
        if errors:
            raise RuntimeError(f"the trials failed: {errors[0]}") from errors[0]
    finally:
        ray.shutdown()
    return {
        "trials": trials,
        "features_bytes": features_bytes,
        "trial_pss": sum(b["pss"] for b in per_trial),
        "node_pss": sum(b["pss"] for b in node.values()),
        "store_pss": sum(b["store_pss"] for b in node.values()),
        "driver_private_over_start": private(driver) - driver_start,
        "trials_private_over_idle": sum(private(b) - b["idle_uss"] for b in per_trial),
        "touched_bytes_per_trial": [r["touched"] for r in records],
        "per_trial": per_trial,
        "driver": driver,
        "node_processes": len(node),
    }


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.8))
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        mine = [r for r in rows if r["dtype"] == dtype]
        counts = [r["trials"] for r in mine]
        axis.plot(
            counts, [r["feature_bytes"] / 1e6 for r in mine], "o-", label=f"{dtype}, measured"
        )
        axis.plot(
            counts,
            [r["features_bytes"] * r["trials"] / 1e6 for r in mine],
            ":",
            label=f"{dtype}, one copy per trial",
        )
    axis.set_xlabel("concurrent trials")
    axis.set_ylabel("feature memory of the node (MB, PSS)")
    axis.set_xticks(sorted({r["trials"] for r in rows}))
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from cluster import prefer_loopback

    prefer_loopback()  # before anything imports ray: the local Ray stays on 127.0.0.1
    machine = machine_info(tensorflow=False)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bottletune-bench-mem-") as scratch:
        root = Path(scratch)
        for dtype in args.dtypes:

            def make(dtype: str = dtype) -> Any:
                return random_bundle(
                    args.cuts, args.size, args.train, args.validation, args.views, dtype
                )

            size = bundle_bytes(args, dtype)
            object_store = max(512 * 1024**2, int(size * 1.5) + 256 * 1024**2)
            for trials in args.trials:
                logger.info("%s features (%s), %d trial(s)...", dtype, mb(size), trials)
                row = measure(trials, make, object_store, root)
                row["dtype"] = dtype
                # The driver holds no copy once the bundle is in the object store;
                # its own private memory moves with Ray's and Tune's state and with
                # the previous run's garbage, so it is in the JSON, not counted.
                row["feature_bytes"] = row["store_pss"] + row["trials_private_over_idle"]
                rows.append(row)
    for row in rows:
        one = next(
            r for r in rows if r["dtype"] == row["dtype"] and r["trials"] == min(args.trials)
        )
        row["ratio_to_one_trial"] = row["feature_bytes"] / one["feature_bytes"]
    header = (
        "dtype",
        "features",
        "trials",
        "object store (PSS, whole node)",
        "trials' private memory over idle",
        "feature memory",
        "× of 1 trial",
        "node PSS (all processes)",
    )
    cells = [
        (
            r["dtype"],
            mb(r["features_bytes"]),
            str(r["trials"]),
            mb(r["store_pss"]),
            mb(r["trials_private_over_idle"]),
            mb(r["feature_bytes"]),
            f"{r['ratio_to_one_trial']:.2f}",
            mb(r["node_pss"]),
        )
        for r in rows
    ]
    top = max(args.trials)
    verdicts = []
    for dtype in args.dtypes:
        row = next(r for r in rows if r["dtype"] == dtype and r["trials"] == top)
        met = row["ratio_to_one_trial"] <= TARGET
        verdicts.append(
            f"{dtype}: {top} trials use {row['ratio_to_one_trial']:.2f}× the feature memory "
            f"of 1 trial (target ≤ {TARGET}: {'met' if met else 'not met'})"
        )
    settings_line = (
        f"Random features shaped like VGG16's {', '.join(args.cuts)} at {args.size} px, "
        f"{args.train} training + {args.validation} validation images"
        + (f", {args.views} views per cut" if args.views else "")
    )
    print()
    print(settings_line)
    print(text_table(header, cells))
    print("; ".join(verdicts))
    print()
    results = {
        "benchmark": "memory",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_seconds": time.perf_counter() - started,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {**machine, "load_average_after": load_average()},
        "results": rows,
        "target": TARGET,
        "verdicts": verdicts,
    }
    write_results(args.out, results)
    if not args.no_doc:
        image = IMG_DIR / "bench-memory.png"
        plot(rows, image)
        update_doc_section(
            "memory",
            f"{settings_line}; {machine_line(machine)}.\n\n"
            + markdown_table(header, cells)
            + "\n\n"
            + "; ".join(verdicts)
            + f".\n\n![memory](img/{image.name})",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
