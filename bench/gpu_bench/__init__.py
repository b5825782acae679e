"""The parts of ``bench/gpu.py``, one job each; that script is the entry point and ``docs/GPU_BENCH.md`` the
documentation.

- ``plan.py``: what a run measures (models, jobs, comparisons) and the configurations it runs them in;
- ``synthetic_weights.py``: the random-weight models at real or tiny size, written in the server's weights layout;
- ``meter.py``: time, per-step times, peak VRAM and peak RSS of one pipeline call;
- ``runners.py``: one pipeline call, plain diffusers' way or this server's;
- ``phases.py``: one configuration loaded and measured, every failure turned into a row's note;
- ``multi.py``: one configuration on a job group of several devices (``--parts parallel``), with each device's peak;
- ``child.py``: one build or configuration run in this process or in a child process, its records collected;
- ``report.py``: the rows as a text table and as the markdown section of ``docs/BENCHMARKS.md``.
"""
