"""Detectron2 through the project's runtime: real detectors train a step on CPU; COCO evaluation."""
import copy
import json
import os

import numpy as np
import pytest
import torch

from transfer.training.config import TINY_OVERRIDES, build_config
from pretrain.common.paths import REPO_ROOT

REPO = REPO_ROOT
R18 = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]


@pytest.mark.parametrize("config, dataset", [
    ("coco_mask_rcnn_R_50_FPN_1x.yaml", "coco_2017_train"),
    ("voc_faster_rcnn_R_50_C4_24k.yaml", "voc_2012_trainval"),
])
def test_one_training_step_on_cpu(synthetic_root, tmp_path, config, dataset):
    from detectron2.data import build_detection_train_loader
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer
    from detectron2.utils.events import EventStorage

    cfg = build_config(os.path.join(REPO, "configs", "transfer", config),
                       TINY_OVERRIDES + R18 + ["DATASETS.TRAIN", f"('{dataset}',)", "OUTPUT_DIR", str(tmp_path)],
                       has_cuda=False)
    model = build_model(cfg)
    model.train()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = build_optimizer(cfg, model)
    batch = next(iter(build_detection_train_loader(cfg)))
    assert len(batch) == 2 and batch[0]["image"].shape[0] == 3
    with EventStorage(0):
        losses = model(batch)
    expected = {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} | ({"loss_mask"} if cfg.MODEL.MASK_ON else set())
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    changed = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
    assert any(k.startswith("backbone") for k in changed) and any(k.startswith("roi_heads") for k in changed)
    if "C4" in config:  # res5 of a ResNet-18 is two basic blocks, followed by the extra norm
        res5 = model.roi_heads.res5
        assert len(res5) == 3 and hasattr(res5[0], "conv2") and not hasattr(res5[0], "conv3")


def _jittered_predictions(gt, rng, iou_type):
    """Detections derived from the ground truth: shifted boxes, random scores, some false positives."""
    results = []
    for ann in gt["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        x, y, w, h = ann["bbox"]
        for _ in range(2):
            dx, dy = rng.normal(0, 0.08 * w), rng.normal(0, 0.08 * h)
            box = [x + dx, y + dy, w * rng.uniform(0.8, 1.2), h * rng.uniform(0.8, 1.2)]
            det = {"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": box,
                   "score": float(rng.uniform(0.05, 1.0))}
            if iou_type == "segm":
                seg = [list(np.asarray(p) + np.tile([dx, dy], len(p) // 2)) for p in ann["segmentation"]]
                det["segmentation"] = seg
            if iou_type == "keypoints":
                kps = np.asarray(ann["keypoints"], dtype=float).reshape(-1, 3)
                kps[:, :2] += rng.normal(0, 2.0, size=(len(kps), 2))
                kps[:, 2] = 1
                det["keypoints"] = kps.ravel().tolist()
            results.append(det)
    return results


@pytest.mark.parametrize("iou_type", ["bbox", "segm", "keypoints"])
def test_faster_coco_eval_matches_pycocotools(synthetic_root, iou_type):
    pytest.importorskip("faster_coco_eval")
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from transfer.runtime.coco_eval import coco_eval_class

    root, _ = synthetic_root
    name = "person_keypoints_train2017.json" if iou_type == "keypoints" else "instances_train2017.json"
    path = os.path.join(str(root), "coco", "annotations", name)
    with open(path) as f:
        gt = json.load(f)
    predictions = _jittered_predictions(gt, np.random.default_rng(0), iou_type)
    assert len(predictions) > 10
    if iou_type == "segm":  # as Detectron2 writes them: RLE
        for det in predictions:
            img = next(i for i in gt["images"] if i["id"] == det["image_id"])
            rles = mask_util.frPyObjects(det.pop("segmentation"), img["height"], img["width"])
            rle = mask_util.merge(rles)
            rle["counts"] = rle["counts"].decode()
            det["segmentation"] = rle

    stats = []
    for cls in (COCOeval, coco_eval_class()):
        coco_gt = COCO(path)
        coco_dt = coco_gt.loadRes(copy.deepcopy(predictions))
        evaluator = cls(coco_gt, coco_dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        stats.append(np.asarray(evaluator.stats[:10 if iou_type == "keypoints" else 12], dtype=float))
    assert coco_eval_class() is not COCOeval
    assert stats[0][0] > 0.05  # a meaningful AP, not an empty comparison
    np.testing.assert_allclose(stats[1], stats[0], rtol=0, atol=1e-12)
