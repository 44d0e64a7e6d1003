#!/usr/bin/env python
"""Check that a transfer run gives the same losses and weights on any number of processes (GPUs).

    python tools/check_invariance.py CONFIG --num-gpus 1,2,8 [--iterations 5] [--ims-per-batch B]
        [--precise-bn-iters K] [--strict] [--tolerance T] [KEY VALUE ...]

Trains a few iterations at each process count with the same global batch, seed and data order, prints
the loss curves side by side and the largest differences (losses, weights, BN statistics). On the CPU,
--num-gpus N starts N gloo processes. The command is transfer.training.invariance.main; exit status 1
when a difference exceeds the tolerance, 2 for a usage error (one line).
"""
import sys

from transfer.training.invariance import main

if __name__ == "__main__":
    sys.exit(main())
