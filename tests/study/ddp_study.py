"""A study that the multi-process study test starts as a separate program; Lightning's launcher
runs it again once per further rank.

usage: python ddp_study.py STUDY.yaml DATA OUT
"""

from __future__ import annotations

import sys

from pneumolab.study.runner import run_study

TWO_PROCESSES = {"accelerator": "cpu", "devices": 2, "distributed_strategy": "ddp"}


def main() -> int:
    study_file, data, out = sys.argv[1:]
    result = run_study(study_file, data, out, TWO_PROCESSES)
    print(f"failed: {sorted(result.failed)}; best: {result.best}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
