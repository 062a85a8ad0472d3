"""Median seconds per sampling step (one denoiser evaluation) of a workload.

  python benchmarks/sample_step.py --workload=tiny
  python benchmarks/sample_step.py --workload=ucf64         # GPU: paper config

The step is the function Trainer.sample compiles, run for one step with the
EMA parameters: one network evaluation (with classifier-free guidance, w != 0, the
two branches run as one evaluation on a doubled batch) plus the sampler update.
Prints a table and one JSON line; the JSON also goes to benchmarks/results/.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  common.common_flags(parser, default_iters=20)
  args = parser.parse_args(argv)
  common.run_main(args, "sample")


if __name__ == '__main__':
  main()
