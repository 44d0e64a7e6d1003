"""Pretraining config: every key and its default in one yacs tree.

A run is ``--config-file X.yaml KEY VALUE ...``: the defaults below, then the YAML file (which may name a
``_BASE_`` file, relative to itself, merged first), then the ``KEY VALUE`` pairs. Unknown keys and values
of the wrong type are errors (:class:`ConfigError`, one line naming the key). The merged config is frozen
and stored as YAML text in every checkpoint (``config``).

Scale conventions
-----------------
- ``SOLVER.BATCH_SIZE`` is global (all processes together); each process gets ``BATCH_SIZE / world size``.
- The learning rate is ``SOLVER.BASE_LR * SOLVER.BATCH_SIZE / SOLVER.REFERENCE_BATCH_SIZE`` (MoCo: 0.03 per
  256 images).
- The run lasts ``SOLVER.EPOCHS`` epochs unless ``SOLVER.MAX_ITER`` > 0, which then sets the number of
  iterations; schedule points given in epochs (``SOLVER.STEPS``, ``SOLVER.WARMUP_EPOCHS``) keep their
  fraction of the run (steps at 120 and 160 of 200 epochs become 60% and 80% of ``MAX_ITER``).
- Periods: ``SOLVER.CHECKPOINT_PERIOD`` and ``LOG_PERIOD`` in iterations, ``KNN.PERIOD`` and
  ``SOLVER.SNAPSHOT_EPOCHS`` in epochs.
"""
import os

from yacs.config import CfgNode as CN

from pretrain.common.yamlio import read_yaml

__all__ = ["ConfigError", "get_cfg", "load_config", "BASE_KEY"]

BASE_KEY = "_BASE_"


class ConfigError(ValueError):
    """A config file or a KEY VALUE override is wrong; the message is one line naming it."""


_C = CN()

# ----------------------------------------------------------------------------- model and method
_C.MODEL = CN()
_C.MODEL.METHOD = "moco"          # a name in pretrain.methods.METHODS
_C.MODEL.ARCH = "resnet50"        # a torchvision ResNet: resnet18/34/50/101/152, resnext*, wide_resnet*
_C.MODEL.HEAD = "linear"          # projection head in the encoder's fc: "linear" (MoCo v1), "mlp" (v2) or
                                  # "mlp_bn" (BN in the hidden layer: keeps short small-batch runs from collapsing)
_C.MODEL.DIM = 128                # embedding dimension (output of the head)
# Numerics of the training step. PRECISION: "auto" = on a CPU, fp32 or bf16 autocast, whichever a few
# timed steps find faster on this machine (pretrain/training/numerics.py; cached per machine and shape);
# on a GPU bf16 autocast (Ampere and newer) or fp16 autocast + loss scaling (older); or force one of
# "fp32", "bf16", "fp16". Losses, logits, queue and weights stay in fp32 in every mode.
_C.MODEL.PRECISION = "auto"
_C.MODEL.CHANNELS_LAST = "auto"   # NHWC activations: True, False, or "auto" (timed with PRECISION, as above)

# ----------------------------------------------------------------------------- MoCo
_C.MOCO = CN()
_C.MOCO.K = 65536                 # queue length (negatives)
_C.MOCO.M = 0.999                 # momentum of the key encoder
_C.MOCO.T = 0.07                  # softmax temperature
_C.MOCO.SHUFFLE_BN = True         # shuffle the key batch across processes (no effect with one process)

# ----------------------------------------------------------------------------- memory-bank methods
# IR / BALL / ANN / LA / BALL+ / ANN+ (Wu et al. 2020) and CMC: one L2-normalised entry per training image,
# m_i <- normalize(t m_i + (1 - t) f_i) (pretrain/methods/memory_bank.py)
_C.BANK = CN()
_C.BANK.MOMENTUM = 0.5            # t, the update rate of Wu et al. B.3
_C.BANK.NUM_NEGATIVES = 4096      # K negatives per sample (IR: uniform from the bank)
_C.BANK.T = 0.07                  # softmax temperature
_C.BANK.LOSS = "infonce"          # "infonce" (Wu et al. 2020's recommendation) or "nce" (InstDis's original)
_C.BANK.NCE_Z = 0.0               # "nce": the normalising constant Z; 0 = estimated on the first batch (InstDis)
_C.BANK.BACKEND = "auto"          # nearest neighbours / k-means: "auto" (FAISS if installed), "faiss", "torch"

# background set B_i (BALL, ANN, LA): the bank entries closest to the current embedding, i excluded
_C.BALL = CN()
_C.BALL.NEIGHBOURS = 4096         # |B_i| (Wu et al. B.3: the 4096 nearest)
_C.BALL.FRACTION = 0.0            # > 0: |B_i| = FRACTION x bank size instead (the paper's top p)
# BALL+ / ANN+: B_i starts as the whole bank and shrinks to NEIGHBOURS (or FRACTION) over training
_C.BALL.ANNEAL = False
_C.BALL.ANNEAL_START = 1.0        # fraction of the bank at the start of the schedule
_C.BALL.ANNEAL_SCHEDULE = "linear"  # "linear", "cosine" or "exp" (geometric) in iterations
_C.BALL.ANNEAL_EPOCHS = (0.0, 0.0)  # (start, end) epoch of the shrinking; end 0 = the end of training

# close-neighbour set C_i (ANN, LA): the members of i's cluster in any of RUNS k-means of the bank,
# recomputed every epoch
_C.CLUSTER = CN()
_C.CLUSTER.K = 30000              # clusters per run (Wu et al. B.3: 30000 on ImageNet, 300 on CIFAR)
_C.CLUSTER.RUNS = 10              # k-means runs with different seeds
_C.CLUSTER.NITER = 20             # Lloyd iterations per run
_C.CLUSTER.ANNEAL = False         # ANN+: C_i grows from empty with the shrinking B_i (see ANNEAL_* above)

# Local Aggregation (Zhuang et al. 2019): loss -log P(C_i & B_i) / P(B_i)
_C.LA = CN()
_C.LA.IR_EPOCHS = 10              # epochs of IR first (Wu et al. B.3: 10 on ImageNet)

# CMC (Tian et al. 2019): L and ab encoders, cross-view contrast against the other view's bank
_C.CMC = CN()
_C.CMC.NEGATIVES = "uniform"      # "uniform" (CMC), "ball" (CMC-BALL) or "ann" (CMC-ANN; + with BALL.ANNEAL)
_C.CMC.WIDTH = 1.0                # width multiplier of each view's encoder (CMC's ImageNet ResNets: 0.5)

# ----------------------------------------------------------------------------- PIRL-style JigSaw branch
# (InfoMin): a third view cut into GRID x GRID tiles, shuffled, encoded by the query encoder tile by tile,
# joined by a JigSaw head and contrasted with the same key and queue; loss = (1 - WEIGHT) * L + WEIGHT * L_jig
_C.JIGSAW = CN()
_C.JIGSAW.ENABLED = False
_C.JIGSAW.GRID = 3
_C.JIGSAW.IMAGE_SIZE = 0          # side of the crop that is cut into tiles; 0: 255/224 x INPUT.SIZE
_C.JIGSAW.TILE_SIZE = 0           # side of a tile; 0: 64/224 x INPUT.SIZE
_C.JIGSAW.SCALE = (0.6, 1.0)      # RandomResizedCrop scale of the JigSaw crop
_C.JIGSAW.WEIGHT = 0.5            # PyContrast's beta

# ----------------------------------------------------------------------------- views
_C.INPUT = CN()
_C.INPUT.VIEWS = "moco_v2"        # a name in pretrain.data.views.VIEWS
_C.INPUT.NUM_VIEWS = 2
# "fast": the recipes' ops on uint8 arrays (OpenCV, torch), the same random draws as "pil" and pixels within
# a level or two of it (pretrain/data/fast_views.py); "pil": the torchvision/PIL ops themselves
_C.INPUT.VIEW_BACKEND = "fast"
_C.INPUT.SIZE = 224
_C.INPUT.CROP_SCALE = (0.2, 1.0)  # RandomResizedCrop scale (InfoMin Appendix C.2: 0.2 is the sweet spot)
_C.INPUT.COLOR_JITTER_STRENGTH = 1.0  # multiplies the recipe's jitter (InfoMin's x, Fig. 5)
_C.INPUT.BLUR_SIGMA = (0.1, 2.0)  # Gaussian blur sigma range, pixels
_C.INPUT.RANDAUGMENT = CN()
_C.INPUT.RANDAUGMENT.NUM_OPS = 2  # timm "rand-n2-m10-mstd0.5", as PyContrast's InfoMin
_C.INPUT.RANDAUGMENT.MAGNITUDE = 10.0   # on timm's 0..10 scale
_C.INPUT.RANDAUGMENT.MAGNITUDE_STD = 0.5
_C.INPUT.PIXEL_MEAN = (0.485, 0.456, 0.406)  # RGB, 0..1 (the converter assumes ImageNet's)
_C.INPUT.PIXEL_STD = (0.229, 0.224, 0.225)

# ----------------------------------------------------------------------------- data
_C.DATA = CN()
_C.DATA.ROOT = ""                 # ImageNet-style: ROOT/train/<class>/*.JPEG, optional ROOT/val/<class>/...
_C.DATA.TRAIN_DIR = "train"
_C.DATA.VAL_DIR = "val"
_C.DATA.NUM_WORKERS = 8           # loader workers per process
_C.DATA.PIN_MEMORY = True         # on GPU
_C.DATA.PREFETCH_FACTOR = 4
_C.DATA.DRAFT_DECODE = True       # JPEG draft decoding: reduced-size DCT decode, never below what a crop needs

# ----------------------------------------------------------------------------- optimisation
_C.SOLVER = CN()
_C.SOLVER.BATCH_SIZE = 256        # global
_C.SOLVER.BASE_LR = 0.03
_C.SOLVER.REFERENCE_BATCH_SIZE = 256
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.WEIGHT_DECAY = 1e-4
_C.SOLVER.EPOCHS = 200
_C.SOLVER.MAX_ITER = 0            # > 0: number of iterations (overrides EPOCHS)
_C.SOLVER.LR_SCHEDULER = "cosine"  # "cosine", "step" or "plateau" (Wu et al. B.3: drop when kNN stops improving)
_C.SOLVER.STEPS = (120, 160)      # "step": epochs at which the lr is multiplied by GAMMA
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.PLATEAU_PATIENCE = 10  # "plateau": epochs without a better kNN top-1 before the lr is multiplied by GAMMA
_C.SOLVER.PLATEAU_DROPS = 2       # "plateau": at most this many drops
_C.SOLVER.COSINE_FINAL_FACTOR = 0.0  # "cosine": final lr / initial lr (PyContrast: 0.001)
_C.SOLVER.WARMUP_EPOCHS = 0.0     # linear warm-up from WARMUP_FACTOR x lr
_C.SOLVER.WARMUP_FACTOR = 0.01
_C.SOLVER.CHECKPOINT_PERIOD = 5000  # iterations; checkpoint_last.pth is also written at every epoch end
_C.SOLVER.STOP_ITER = 0           # > 0: stop after this iteration as if preempted (resume with --resume)
_C.SOLVER.SNAPSHOT_EPOCHS = 0     # > 0: keep checkpoint_epochXXXX.pth after every this many epochs (never rewritten)

# ----------------------------------------------------------------------------- kNN monitor (InstDis)
_C.KNN = CN()
_C.KNN.PERIOD = 10                # epochs; 0 disables. Runs when DATA.ROOT/val has labels, and at the end
_C.KNN.K = 200
_C.KNN.T = 0.07
_C.KNN.FEATURE = "embedding"      # "embedding" (L2-normalised head output, as InstDis) or "backbone"
_C.KNN.BATCH_SIZE = 256           # per process
_C.KNN.MAX_TRAIN_IMAGES = 0       # > 0: a fixed subset of the train set as the kNN memory

# ----------------------------------------------------------------------------- distributed
_C.DIST = CN()
_C.DIST.BACKEND = "auto"          # "auto": nccl on GPU, gloo on CPU
_C.DIST.TIMEOUT_MINUTES = 30

# ----------------------------------------------------------------------------- run
_C.DEVICE = "auto"                # "auto" (cuda when available), "cpu" or "cuda"
_C.SEED = -1                      # < 0: drawn at start and recorded in the checkpoint's config
_C.LOG_PERIOD = 20                # iterations
_C.TENSORBOARD = True
_C.OUTPUT_DIR = "./output/pretrain"


def get_cfg():
    """A fresh, mutable copy of the defaults."""
    return _C.clone()


def _read_yaml(path, seen):
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"{path}: {BASE_KEY} chain loops back to this file")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file")
    data = read_yaml(path, ConfigError)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: {BASE_KEY} must be a file name")
    merged = _read_yaml(os.path.join(os.path.dirname(path), base), seen | {path})
    _deep_update(merged, data)
    return merged


def _deep_update(into, new):
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_update(into[key], value)
        else:
            into[key] = value


def _coerce(default, value):
    """YAML and the command line write 1 for 1.0 and lists for tuples: accept those."""
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, (tuple, list)) and isinstance(value, (tuple, list)) and default:
        if all(isinstance(d, float) for d in default):
            return type(value)(_coerce(0.0, v) for v in value)
    return value


_BOOL_OR_AUTO = {"MODEL.CHANNELS_LAST"}  # keys that take True, False or "auto"


def _merge(cfg, data, source, prefix=""):
    """Merge a nested dict into ``cfg`` key by key, so that an error names the full key."""
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in cfg:
            raise ConfigError(f"{source}: unknown config key {full}")
        if isinstance(cfg[key], CN):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {full} is a group of keys, got {value!r}")
            _merge(cfg[key], value, source, full + ".")
            continue
        if full in _BOOL_OR_AUTO:
            if value not in (True, False, "auto") or isinstance(value, (int, float)) and not isinstance(value, bool):
                raise ConfigError(f"{source}: bad value for {full}: {value!r}; use auto, True or False")
            cfg[key] = value
            continue
        try:
            cfg.merge_from_other_cfg(CN({key: _coerce(cfg[key], value)}))
        except (ValueError, AssertionError, KeyError) as e:
            raise ConfigError(f"{source}: bad value for {full}: {_short(e)}") from None


def _short(exc):
    text = " ".join(str(exc).split())
    return text if len(text) < 200 else text[:197] + "..."


def load_config(config_file=None, opts=(), defaults=None):
    """Defaults + ``config_file`` (with its ``_BASE_`` chain) + ``KEY VALUE`` pairs; returns a mutable
    :class:`CfgNode`. Raises :class:`ConfigError`. ``defaults``: another tree of defaults to merge into
    (e.g. linear evaluation's), instead of the pretraining one."""
    cfg = get_cfg() if defaults is None else defaults
    if config_file:
        _merge(cfg, _read_yaml(config_file, frozenset()), config_file)
    opts = list(opts or ())
    if len(opts) % 2:
        raise ConfigError(f"overrides must be KEY VALUE pairs; {opts[-1]!r} has no value")
    for key, value in zip(opts[0::2], opts[1::2]):
        nested = CN._decode_cfg_value(value) if isinstance(value, str) else value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        _merge(cfg, nested, "command line")
    return cfg
