"""Differential tests: the same QMP conversations against qemu-storage-daemon and qmpjobd.

* :mod:`.model` — scenario data (steps, expectations) and its JSON form;
* :mod:`.scenarios` — the scenarios themselves;
* :mod:`.harness` — targets (QEMU, qmpjobd) and the scenario runner;
* :mod:`.normalise` — normalisation and comparison of transcripts;
* :mod:`.record` — ``python -m tests.differential.record`` writes the golden
  transcripts under ``tests/golden/`` from a live qemu-storage-daemon.
"""
