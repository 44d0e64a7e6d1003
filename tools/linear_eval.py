#!/usr/bin/env python
"""Linear evaluation on frozen features (Wu et al. 2020, Appendix B.3): a logistic regression on any backbone.

    python tools/linear_eval.py --config-file configs/linear/<dataset>.yaml --weights W [--out DIR] [--force]
        [--format LAYOUT] [--trust-pickle] KEY VALUE ...

Writes results.json (and metrics.jsonl, linear_last.pth, linear_final.pth) in
output/linear_<dataset>/<backbone>/frozen/seed<k>/ or --out; see pretrain/evaluation/linear/ for the protocol.
"""
import sys

from pretrain.evaluation.linear.command import main

if __name__ == "__main__":
    sys.exit(main())
