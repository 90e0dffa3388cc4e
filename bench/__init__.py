"""Benchmarks of bottletune, each a module with a ``main(argv)``; ``bench.run_all`` runs them all.

Not part of the installed package: run them from the repository root
(``python -m bench.run_all`` or ``python -m bench.<module> --help``).
"""
