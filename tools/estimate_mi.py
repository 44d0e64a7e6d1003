#!/usr/bin/env python
"""Post-training mutual-information estimate of a frozen backbone (Lee et al.): a fresh critic, a large batch.

    python tools/estimate_mi.py --weights W --data ROOT --pairing simclr|class[:<attr>[+<attr>...]|:all]
                                [--k-est 256] [--iters N] [--seeds S] [--out DIR] [--form infonce|ntxent]
                                [--views NAME|CONFIG.yaml] [--views-per-image V] [--image-size PX] ...

Prints one line (MI in nats and bits +- the spread over seeds, the ceiling log K_Est, H(C)) and writes mi.json
(default: output/mi/<backbone>/<pairing>/mi.json); --help lists every option. See pretrain/evaluation/mi/ for
the protocol.
"""
import sys

from pretrain.evaluation.mi.command import main

if __name__ == "__main__":
    sys.exit(main())
