"""Runs every benchmark with its default settings: ``python -m bench.run_all``.

Each benchmark is a module of this package with a ``main(argv) -> int``; a module
is imported only when its turn comes, so one benchmark's heavy imports (and
TensorFlow thread settings) are made by that benchmark itself.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time

logger = logging.getLogger(__name__)

BENCHMARKS: tuple[str, ...] = ("bench.cache_vs_naive",)
"""Modules run by ``main``, in order."""


def main(argv: list[str] | None = None) -> int:
    """Runs every module in ``BENCHMARKS`` with its defaults.

    Args:
        argv: Unused; accepted so that every benchmark entry point looks alike.

    Returns:
        0 when every benchmark succeeded, 1 otherwise (the others still run).
    """
    del argv
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    failed: list[str] = []
    for name in BENCHMARKS:
        started = time.perf_counter()
        logger.info("== %s", name)
        try:
            code = importlib.import_module(name).main([])
        except Exception:
            logger.exception("benchmark %s failed", name)
            code = 1
        logger.info("== %s finished in %.1f s (exit %s)", name, time.perf_counter() - started, code)
        if code:
            failed.append(name)
    if failed:
        logger.error("failed benchmarks: %s", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
