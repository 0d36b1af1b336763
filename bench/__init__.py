"""Pipewarden's benchmarks, run by `make bench` as `python -m bench`.

Each section is a module with NAME, TITLE and `run(ctx) -> SectionResult` (see `bench.common`),
listed in `bench.__main__.SECTIONS`. Servers and the load client run in processes of their own,
and comparisons are ratios measured side by side in one run, because the benchmark machine is
small, shared and noisy: the absolute numbers are context, the ratios are the figures to watch.
"""
