#!/usr/bin/env python
"""Contrastive pretraining of a ResNet (MoCo v1/v2, InfoMin, IR, BALL, ANN, LA, BALL+, ANN+, CMC).

    python tools/pretrain_backbone.py --config-file configs/pretrain/<name>.yaml [--num-gpus N] [--resume]
        [--trust-pickle] KEY VALUE ...

The command is pretrain.training.train.main; errors a user can fix are one line on stderr, exit status 2.
"""
import sys

from pretrain.training.train import main

if __name__ == "__main__":
    sys.exit(main())
