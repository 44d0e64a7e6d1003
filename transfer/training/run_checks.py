"""What ``train_net`` checks in the launching process before it writes anything or builds a model.

- :func:`check_output_dir`: ``OUTPUT_DIR`` can be created and written (nothing is created here);
- :func:`check_weights`: ``MODEL.WEIGHTS`` opens with the safe reader (any format: a crafted or truncated
  ``.pth`` is one line now, not a traceback once the model is built);
- :func:`check_resume`: ``--resume`` continues a run of the same architecture; the keys that shape the
  model's parameters or which of them train (:data:`RESUME_KEYS`) are compared with the run's saved
  ``config.yaml`` before Detectron2 overwrites it;
- :func:`evaluated_weights`: what ``--eval-only`` evaluates; without weights it is refused unless
  ``--random-init`` asks for a randomly initialised model.

Each raises the caller's error type (``ConfigError``) with one line.
"""
import os

import yaml

from pretrain.common.fileio import unwritable_reason
from pretrain.common.runs import CONFIG_FILE
from pretrain.common.safe_load import CheckpointError, read_checkpoint
from transfer.training.overrides import lookup_key

__all__ = ["RESUME_KEYS", "LAST_CHECKPOINT", "check_output_dir", "check_weights", "has_checkpoint", "check_resume",
           "evaluated_weights"]

LAST_CHECKPOINT = "last_checkpoint"  # Detectron2's tag of the newest checkpoint in OUTPUT_DIR

# keys that change the model's parameters (shapes, count) or which of them are trained (and so the
# optimizer's state): a checkpoint of another value cannot be resumed
RESUME_KEYS = (
    "MODEL.META_ARCHITECTURE", "MODEL.MASK_ON", "MODEL.KEYPOINT_ON", "MODEL.BACKBONE.NAME",
    "MODEL.BACKBONE.FREEZE_AT", "MODEL.RESNETS.DEPTH", "MODEL.RESNETS.NUM_GROUPS", "MODEL.RESNETS.WIDTH_PER_GROUP",
    "MODEL.RESNETS.STRIDE_IN_1X1", "MODEL.RESNETS.RES5_DILATION", "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "MODEL.RESNETS.DEFORM_ON_PER_STAGE", "MODEL.RESNETS.OUT_FEATURES",
    "MODEL.FPN.IN_FEATURES", "MODEL.FPN.OUT_CHANNELS", "MODEL.ANCHOR_GENERATOR.SIZES",
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "MODEL.RPN.HEAD_NAME", "MODEL.RPN.CONV_DIMS", "MODEL.ROI_HEADS.NAME",
    "MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.ROI_HEADS.IN_FEATURES", "MODEL.ROI_BOX_HEAD.NAME",
    "MODEL.ROI_BOX_HEAD.NUM_FC", "MODEL.ROI_BOX_HEAD.FC_DIM", "MODEL.ROI_BOX_HEAD.NUM_CONV",
    "MODEL.ROI_BOX_HEAD.CONV_DIM", "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION",
    "MODEL.ROI_MASK_HEAD.NAME", "MODEL.ROI_MASK_HEAD.NUM_CONV", "MODEL.ROI_MASK_HEAD.CONV_DIM",
    "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", "MODEL.ROI_KEYPOINT_HEAD.NAME", "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS",
    "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS", "TRANSFER.MODE", "TRANSFER.RES5_EXTRA_NORM",
    "TRANSFER.RES5_MATCH_BACKBONE",
)


def check_output_dir(folder, error=ValueError):
    reason = unwritable_reason(folder)
    if reason:
        raise error(f"OUTPUT_DIR {reason}")


def check_weights(path, trust_pickle=False, error=ValueError):
    """Open ``MODEL.WEIGHTS`` once with the safe reader (a ``.pkl`` was read for its meta already)."""
    if not path:
        return
    if not os.path.isfile(path):
        raise error(f"MODEL.WEIGHTS file not found: {path}")
    if path.endswith(".pkl"):
        return
    try:
        read_checkpoint(path, trust_pickle=trust_pickle)
    except CheckpointError as e:
        raise error(f"MODEL.WEIGHTS {e}") from None


def _same(a, b):
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def has_checkpoint(out_dir):
    return os.path.isfile(os.path.join(out_dir, LAST_CHECKPOINT))


def check_resume(cfg, out_dir, trust_pickle=False, error=ValueError):
    """Refuse ``--resume`` into a run whose checkpoint (named by ``last_checkpoint``) the safe reader refuses,
    or whose saved ``config.yaml`` has another architecture (one line naming every changed key). No
    checkpoint: Detectron2 starts from MODEL.WEIGHTS, nothing to refuse."""
    if not has_checkpoint(out_dir):
        return
    with open(os.path.join(out_dir, LAST_CHECKPOINT)) as f:
        name = f.read().strip()
    checkpoint = os.path.join(out_dir, name)
    if not name or not os.path.isfile(checkpoint):
        raise error(f"--resume: {out_dir}/{LAST_CHECKPOINT} names {name!r}, which is not a file; fix or remove "
                    f"{LAST_CHECKPOINT}")
    try:
        read_checkpoint(checkpoint, trust_pickle=trust_pickle)
    except CheckpointError as e:
        raise error(f"--resume: {e}") from None
    saved_path = os.path.join(out_dir, CONFIG_FILE)
    if not os.path.isfile(saved_path):
        return
    try:
        with open(saved_path) as f:
            saved = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise error(f"--resume: cannot read {saved_path} to compare the architecture: "
                    f"{' '.join(str(e).split())[:160]}") from None
    if not isinstance(saved, dict):
        raise error(f"--resume: {saved_path} is not a config")
    changed = []
    for key in RESUME_KEYS:
        old, found = lookup_key(saved, key)
        if not found:
            continue
        new, _ = lookup_key(cfg, key)
        if not _same(old, new):
            changed.append(f"{key} {old!r} -> {new!r}")
    if changed:
        raise error(f"--resume: {out_dir} holds a run of another architecture ({'; '.join(changed)}); "
                    "resume with its settings or use another OUTPUT_DIR")


def evaluated_weights(cfg, out_dir, resume, random_init, error=ValueError):
    """What ``--eval-only`` evaluates: the resumed checkpoint, ``MODEL.WEIGHTS``, or with ``random_init`` an
    untrained model ("" ). Without any of them the evaluation is refused."""
    if resume and has_checkpoint(out_dir):
        with open(os.path.join(out_dir, LAST_CHECKPOINT)) as f:
            return os.path.join(out_dir, f.read().strip())
    if cfg.MODEL.WEIGHTS:
        if random_init:
            raise error(f"--random-init evaluates an untrained model, but MODEL.WEIGHTS is {cfg.MODEL.WEIGHTS}; "
                        "drop one of them")
        return cfg.MODEL.WEIGHTS
    if not random_init:
        raise error("--eval-only needs weights to evaluate: give MODEL.WEIGHTS (or --resume into a run with a "
                    "checkpoint), or --random-init to evaluate a randomly initialised model on purpose")
    return ""
