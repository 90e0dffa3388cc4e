"""Size of every feature-cache entry at the recipe's setup, from VGG16's layer output shapes.

No timing: the backbone is built with random weights only to read the output
shape of each cut (block5_pool down to block1_pool, and the preprocessed input).
A plain entry holds the training and validation images; an augmented view holds
the training images only. The last line is what the cache plan stores of it
with the default configuration and a 16 GB object store (``core.plan``).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from bench.common import (
    BACKBONE,
    WEIGHTS,
    add_output_flags,
    markdown_table,
    mb,
    positive_int,
    setup_logging,
    text_table,
    update_doc_section,
    write_results,
)

DTYPES = {"float32": 4, "float16": 2}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.entry_sizes", description="Feature-cache entry sizes per cut."
    )
    parser.add_argument("--size", type=positive_int, default=150, help="image side in px")
    parser.add_argument("--train", type=positive_int, default=2000, help="training images")
    parser.add_argument("--validation", type=positive_int, default=800, help="validation images")
    parser.add_argument(
        "--views", type=positive_int, default=8, help="views per strength (for the search total)"
    )
    parser.add_argument(
        "--strengths", type=positive_int, default=4, help="augmentation strengths above 0"
    )
    parser.add_argument(
        "--object-store", default="16GB", help="the trial nodes' object store, for the plan"
    )
    add_output_flags(parser, "entry_sizes")
    return parser.parse_args(argv)


def default_plan(args: argparse.Namespace) -> Any:
    """The cache plan of the default config and space at ``args``' size and image counts."""
    from core.plan import parse_bytes, plan_cache, profile_backbone, resolve_budget
    from search_spaces import load_space
    from tuning.config import SearchConfig

    config = SearchConfig().replace(image_size=args.size)
    store = parse_bytes(args.object_store, "--object-store")
    budget, source = resolve_budget("auto", store)
    return plan_cache(
        config.feature_request(load_space(config.searcher.space)),
        profile_backbone(BACKBONE, args.size),
        train_images=args.train,
        validation_images=args.validation,
        budget_bytes=budget,
        budget_source=source,
        object_store_bytes=store,
    )


def plan_line(plan: Any, object_store: str) -> str:
    fresh = sorted({cut for cut, _ in plan.fresh})
    return (
        f"The cache plan of the default configuration ({plan.views_per_strength} views per "
        f"strength, {plan.dtype}) for a {object_store} object store stores {mb(plan.nbytes)}: "
        f"views at {', '.join(plan.view_cuts) or 'no cut'}, fresh augmentation at "
        f"{', '.join(fresh) or 'no cut'} (`bottletune cache plan` prints its reasons)."
    )


def cut_shapes(size: int) -> list[tuple[str, tuple[int, ...]]]:
    """(cut, per-image shape) from the top block down to the input."""
    from core.backbones import INPUT_CUT, build_backbone, get_backbone

    spec = get_backbone(BACKBONE)
    model = build_backbone(BACKBONE, WEIGHTS, size, seed=0)
    shapes = [(cut, tuple(model.get_layer(cut).output.shape[1:])) for cut in spec.block_ends]
    shapes.append((INPUT_CUT, (size, size, 3)))
    return list(reversed(shapes[:-1])) + [shapes[-1]]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from core.backbones import get_backbone

    spec = get_backbone(BACKBONE)
    rows: list[dict[str, Any]] = []
    for cut, shape in cut_shapes(args.size):
        values = int(np.prod(shape))
        row: dict[str, Any] = {"cut": cut, "shape": list(shape), "values_per_image": values}
        for dtype, width in DTYPES.items():
            row[dtype] = {
                "per_image": values * width,
                "plain_entry": values * width * (args.train + args.validation),
                "view": values * width * args.train,
            }
        rows.append(row)
    # What the default search space asks for: unfreeze 0..3 -> the cuts of blocks 5..2,
    # each with one plain entry and views x strengths augmented views.
    default_cuts = set(spec.cuts_for(range(4)))
    totals = {
        dtype: sum(
            r[dtype]["plain_entry"] + args.views * args.strengths * r[dtype]["view"]
            for r in rows
            if r["cut"] in default_cuts
        )
        for dtype in DTYPES
    }
    header = (
        "cut",
        "shape",
        "per image f32 / f16",
        f"plain entry ({args.train}+{args.validation}) f32 / f16",
        f"per view ({args.train}) f32 / f16",
    )
    cells = [
        (
            r["cut"],
            "×".join(str(d) for d in r["shape"]),
            f"{mb(r['float32']['per_image'])} / {mb(r['float16']['per_image'])}",
            f"{mb(r['float32']['plain_entry'])} / {mb(r['float16']['plain_entry'])}",
            f"{mb(r['float32']['view'])} / {mb(r['float16']['view'])}",
        )
        for r in rows
    ]
    print(text_table(header, cells))
    total_line = (
        f"The default search space (unfreeze 0–3, so cuts {', '.join(spec.cuts_for(range(4)))}; "
        f"{args.strengths} augmentation strengths × {args.views} views) needs "
        f"{mb(totals['float32'])} in float32 and {mb(totals['float16'])} in float16, "
        "on disk and in the object store, without a cache plan."
    )
    print(total_line)
    plan = default_plan(args)
    planned = plan_line(plan, args.object_store)
    print(planned)
    results = {
        "benchmark": "entry_sizes",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": vars(args) | {"out": str(args.out)},
        "rows": rows,
        "default_space_totals": totals,
        "default_plan": {
            "bytes": plan.nbytes,
            "views_per_strength": plan.views_per_strength,
            "view_cuts": list(plan.view_cuts),
            "fresh": [list(pair) for pair in plan.fresh],
            "choices": list(plan.choices),
        },
    }
    write_results(args.out, results)
    if not args.no_doc:
        update_doc_section(
            "entry_sizes",
            f"VGG16 at {args.size} px, {args.train} training + {args.validation} validation "
            "images (1 KB = 1000 bytes).\n\n"
            + markdown_table(header, cells)
            + f"\n\n{total_line}\n\n{planned}",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
