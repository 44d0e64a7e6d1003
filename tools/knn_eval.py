#!/usr/bin/env python
"""kNN evaluation on frozen features (InstDis's weighted k-nearest neighbours) of any backbone.

    python tools/knn_eval.py --config-file configs/linear/<dataset>.yaml --weights W [--out DIR] [--force]
        [--format LAYOUT] [--trust-pickle] KEY VALUE ...        (KNN.K 200, KNN.T 0.07)

Writes results.json (task knn_<dataset>, metrics knn.top1/top5) in output/knn_<dataset>/<backbone>/frozen/seed<k>/
or --out; see pretrain/evaluation/knn.py for the protocol.
"""
import sys

from pretrain.evaluation.knn import main

if __name__ == "__main__":
    sys.exit(main())
