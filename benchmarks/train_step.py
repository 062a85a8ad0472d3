"""Median seconds per training step of a workload, with compile time, memory, FLOPs.

  python benchmarks/train_step.py --workload=tiny           # CPU, peer-sized
  python benchmarks/train_step.py --workload=ucf64          # GPU: paper config
  python benchmarks/train_step.py --workload=bair64 --batch_size=8

A step is Trainer.train_step exactly as training runs it: forward, backward,
the optimizer update and the EMA update, jitted with donated state. Prints a
table and one JSON line; the JSON also goes to benchmarks/results/.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  common.common_flags(parser, default_iters=10)
  args = parser.parse_args(argv)
  common.run_main(args, "train")


if __name__ == '__main__':
  main()
