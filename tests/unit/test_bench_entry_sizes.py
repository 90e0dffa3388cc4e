"""The entry-size benchmark's last line: what the cache plan stores at the recipe's scale."""

from __future__ import annotations

from bench.entry_sizes import default_plan, parse_args, plan_line

GB = 10**9


def test_the_plan_line_reports_the_default_plan_at_the_recipes_scale() -> None:
    args = parse_args([])  # 150 px, 2000 + 800 images, a 16 GB object store
    plan = default_plan(args)
    assert plan.nbytes < 0.7 * 16 * GB  # inside the default budget
    line = plan_line(plan, args.object_store)
    assert "for a 16GB object store" in line
    assert "views at block5_pool, block4_pool" in line
    assert "fresh augmentation at block2_pool, block3_pool" in line
    # A smaller store gets a smaller plan.
    small = default_plan(parse_args(["--object-store", "4GB"]))
    assert small.nbytes < 0.7 * 4 * GB < plan.nbytes
