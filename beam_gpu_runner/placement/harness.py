"""The module worker processes run: ``python -m beam_gpu_runner.placement.harness``.

Beam's SDK harness with ~1 MB output messages (``bridge.harness`` says why);
kept as its own tiny module so that a worker imports nothing else first.
"""
from __future__ import annotations

import sys

MODULE = __name__


def main(argv: list[str]) -> None:
    from beam_gpu_runner.bridge.harness import run_harness

    run_harness(argv)


if __name__ == "__main__":
    main(sys.argv)
