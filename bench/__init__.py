"""Benchmarks: qmpjobd next to qemu-storage-daemon, measured in the same run.

Run ``python -m bench --help``. Nothing here imports the daemon except the
in-process profiling helper (:mod:`bench.profile`).
"""
