#!/usr/bin/env python
"""Run one published transfer setting on a backbone with Detectron2: train, evaluate, write results.json.

    python tools/train_net.py --config-file configs/transfer/<name>.yaml [--num-gpus N]
        [--num-machines M --machine-rank R --dist-url URL] [--eval-only [--random-init]] [--resume]
        [--trust-pickle] KEY VALUE ...
    python tools/train_net.py --config-file ... --print-config [--reference | --num-gpus N] KEY VALUE ...

The command is transfer.training.train_net.main; errors a user can fix are one line on stderr, exit status 2.
"""
import sys

from transfer.training.train_net import main

if __name__ == "__main__":
    sys.exit(main())
