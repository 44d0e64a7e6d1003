"""The transfer config: Detectron2's ``get_cfg()`` plus the project's keys, added in this one place."""
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

import transfer.heads  # noqa: F401  (registers the project's heads)


def add_transfer_config(cfg):
    """Add the project's keys (and their defaults) to a Detectron2 config."""
    cfg.TRANSFER = CN()
    # "finetune": backbone trained from res2 on with SyncBN; "frozen": whole backbone frozen (FrozenBN)
    cfg.TRANSFER.MODE = "finetune"
    # label of the backbone in results.json; "" = the weights file's stem, or "random" without weights
    cfg.TRANSFER.BACKBONE_NAME = ""
    # a norm layer after res5 in the C4 head (MoCo's fine-tuning protocol); used by Res5ROIHeadsAnyDepth
    cfg.TRANSFER.RES5_EXTRA_NORM = False
    # users' own COCO-format datasets: [[name, json_file, image_root], ...]
    cfg.TRANSFER.COCO_DATASETS = []
    return cfg


def get_transfer_cfg():
    """A fresh config with Detectron2's defaults and the project's keys."""
    return add_transfer_config(get_cfg())
