"""Where the backbone lives in a checkpoint (its *layout*), and which layout a checkpoint has.

Layouts (``--format``; ``auto`` tries them in this order and takes the first that matches)
-----------------------------------------------------------------------------------------
=============  ==========================================================================================
``pretrain``   this project's pretraining checkpoints (format in docs/artifacts.md), see below
``moco``       MoCo v1/v2: ``state_dict['module.encoder_q.*']``; ``--ema``: ``module.encoder_k.*``
``mocov3``     MoCo v3: ``state_dict['module.base_encoder.*']``; ``--ema``: ``module.momentum_encoder.*``
``pycontrast`` InfoMin / PyContrast: ``model['module.encoder.*']``; ``--ema``: ``model_ema['encoder.*']``
``solo-learn`` solo-learn (Lightning): ``state_dict['backbone.*']`` next to ``projector``,
               ``momentum_backbone``, ``classifier``, ...; ``--ema``: ``momentum_backbone.*``
``mmselfsup``  mmselfsup / mmpretrain: ``state_dict['backbone.*']`` (torchvision names inside)
``vissl``      VISSL: ``classy_state_dict.base_model.model.trunk['_feature_blocks.*']``
``detectron2`` Detectron2 names (``stem.conv1.*``, ``res2.0.conv1.norm.*``): a weights ``.pkl``
               (with or without ``meta``) or a trained model (``model['backbone.bottom_up.*']`` for FPN,
               ``backbone.*`` + ``roi_heads.res5.*`` for C4)
``caffe2``     Caffe2 / Detectron1 names (``conv1_w``, ``res_conv1_bn_s``, ``res2_0_branch2a_w``): the
               MSRA/FAIR ImageNet ``.pkl`` files of Detectron2's model zoo
``timm``       timm's training checkpoints: ``state_dict`` (``--ema``: ``state_dict_ema``) with
               torchvision names (timm's ResNets use torchvision's names)
``torchvision`` a plain state dict with torchvision names (``conv1.weight``, ``layer1.0.conv1.weight``,
               optionally ``module.``-prefixed), also under ``model`` as torchvision's references save it
               (``--ema``: ``model_ema``); timm hub weights are read as this layout
=============  ==========================================================================================

Everything of a checkpoint outside the backbone (projection heads, predictors, momentum encoders, queues
and memory banks, optimizer state, ``num_batches_tracked``) is counted by :func:`category`. Checkpoints
of CMC (two encoders, on L and ab channels) are refused: they are not an RGB backbone.

This project's pretraining checkpoint (``--format pretrain``)
-------------------------------------------------------------
``torch.save`` of a dict, loadable with ``torch.load(weights_only=True)``::

    {"state_dict": {"encoder_q.<torchvision ResNet name>": tensor,   # query / online encoder
                    "encoder_k.<torchvision ResNet name>": tensor,   # key / momentum encoder, optional
                    "queue": tensor, "queue_ptr": tensor, "head.*": ..., ...},
     "arch": "resnet50",       # torchvision model name (width multipliers: e.g. "resnet50x2")
     "method": "moco", "config": "<YAML text>", "iter": int, "epoch": int, ...}

A single-encoder method stores its encoder under ``encoder.`` instead of ``encoder_q.``. Inside an
encoder the names are torchvision's ``ResNet`` names (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``fc`` for the projection head, which is dropped). ``method`` marks the layout; ``--ema`` reads
``encoder_k.``.
"""
import collections
import dataclasses
import re
from collections.abc import Mapping

import numpy as np
import torch

from pretrain.checkpoints.errors import ConversionError, describe_keys, looks_like_vit, not_resnet_error

__all__ = ["LAYOUTS", "LAYOUT_ORDER", "Layout", "Location", "category", "detect_layout", "find_mapping",
           "is_tensor", "tensor_paths"]


def is_tensor(value):
    """A torch tensor or a numpy array (Caffe2 and Detectron2 ``.pkl`` files hold arrays)."""
    return isinstance(value, (torch.Tensor, np.ndarray))


def find_mapping(obj, path):
    """The dict at ``path`` (a tuple of keys) inside nested dicts, or None."""
    for part in path:
        if not isinstance(obj, Mapping) or part not in obj:
            return None
        obj = obj[part]
    return obj if isinstance(obj, Mapping) else None


def tensor_paths(obj, prefix=""):
    """(dotted path, tensor) for every tensor leaf in nested dicts/lists."""
    if is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from tensor_paths(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from tensor_paths(value, f"{prefix}.{i}" if prefix else str(i))


_CATEGORIES = (  # first match wins: a momentum encoder's num_batches_tracked counts as momentum encoder
    ("optimizer", re.compile(r"(^|\.)(optimizer\w*|optim|scaler|grad_scaler|lr_schedulers?|scheduler|amp)"
                             r"(\.|$)|_momentum$")),
    ("momentum_encoder", re.compile(r"(^|\.)(encoder_k|momentum_\w+|target_\w+|teacher\w*|model_ema|"
                                    r"state_dict_ema|ema|key_encoder)(\.|$)")),
    ("bookkeeping", re.compile(r"(^|\.)(num_batches_tracked|queue_ptr|n_averaged)$")),
    ("queue", re.compile(r"(^|\.)(queue\w*|memory\w*|contrast\w*|bank\w*)(\.|$)")),
    ("head", re.compile(r"(^|\.)(fc\d*|head\w*|heads|projector\w*|predictor\w*|classifier\w*|prototypes\w*|"
                        r"neck|mlp\w*|jigsaw\w*|clf)(\.|$)|(^|\.)fc1000_[wb]$")),
    ("detector", re.compile(r"(^|\.)(proposal_generator|roi_heads|fpn_\w+|top_block|sem_seg_head|"
                            r"panoptic\w*|pixel_mean|pixel_std)(\.|$)")),
    ("online_encoder", re.compile(r"(^|\.)(encoder_q|encoder|base_encoder|backbone|_feature_blocks|trunk|"
                                  r"module)(\.|$)")),
)


def category(path):
    """What a tensor outside the backbone is, from its dotted path: head, queue, optimizer, ... or other."""
    for name, pattern in _CATEGORIES:
        if pattern.search(path):
            return name
    return "other"


@dataclasses.dataclass
class Location:
    """Where a layout found the backbone."""

    where: str            # human description: a subscript of the checkpoint
    container: tuple      # path of the dict holding the backbone inside the checkpoint
    backbone: dict        # key in the container -> its name inside the backbone (prefix stripped)
    names: str            # naming scheme inside the backbone: torchvision | detectron2 | caffe2


def _where(container, prefix):
    """Where a backbone is, as a subscript of the checkpoint: ['state_dict']['module.encoder_q.*']."""
    text = "".join(f"[{p!r}]" for p in container)
    return f"{text}[{prefix + '*'!r}]" if prefix else text


@dataclasses.dataclass(frozen=True)
class Layout:
    """A checkpoint layout: the dicts and key prefixes where its backbone (and its EMA encoder) may be."""

    name: str
    description: str
    containers: tuple = ((),)           # where the model dict may be, tried in order
    prefixes: tuple = ("",)             # backbone prefixes inside it, tried in order
    ema_containers: tuple = None        # for --ema (None: same as containers)
    ema_prefixes: tuple = None          # for --ema (None: the layout has no EMA encoder)
    require_top: tuple = ()             # top-level keys the checkpoint must have
    markers: tuple = ()                 # regexes; one key of the checkpoint must match one
    resnet_key_needed: bool = False     # a bare prefix must be followed by a torchvision ResNet name
    names: str = "torchvision"

    def find(self, ckpt, ema):
        """The :class:`Location` of the backbone (EMA encoder with ``ema``), or None if not this layout."""
        if any(k not in ckpt for k in self.require_top):
            return None
        if self.markers:
            names = [str(k) for k in ckpt] + [path for path, _ in tensor_paths(ckpt)]
            if not any(re.search(p, name) for name in names for p in self.markers):
                return None
        hit = self._search(ckpt, self.containers, self.prefixes)
        if hit is None or not ema:
            return hit
        if self.ema_prefixes is None:
            raise ConversionError(f"--ema: {self.name} checkpoints have no EMA or momentum encoder")
        containers = self.ema_containers or self.containers
        hit = self._search(ckpt, containers, self.ema_prefixes)
        if hit is None:
            looked = " or ".join(_where(c, p) for c in containers for p in self.ema_prefixes)
            raise ConversionError(f"--ema: this {self.name} checkpoint has no EMA/momentum encoder "
                                  f"(looked for {looked})")
        return hit

    def _search(self, ckpt, containers, prefixes):
        for container in containers:
            model = find_mapping(ckpt, container)
            if model is None:
                continue
            for prefix in prefixes:
                selected = {k: k[len(prefix):] for k, v in model.items()
                            if isinstance(k, str) and k.startswith(prefix) and is_tensor(v)}
                if not selected:
                    continue
                if self.resnet_key_needed and not any(
                        n == "conv1.weight" or re.match(r"layer[1-4]\.\d+\.", n) for n in selected.values()):
                    continue
                return Location(_where(container, prefix), container, selected, self.names)
        return None


class _Detectron2Layout(Layout):
    """Detectron2 names, under the prefix of the stem; C4's res5 may live in ``roi_heads``."""

    def _search(self, ckpt, containers, prefixes):
        pattern = re.compile(r"^(?P<p>(?:\w+\.)*?)(?:stem\.conv1\.|res[2-5]\.\d+\.)")
        for container in containers:
            model = find_mapping(ckpt, container)
            if model is None:
                continue
            found = collections.Counter()
            for k, v in model.items():
                m = pattern.match(k) if isinstance(k, str) and is_tensor(v) else None
                if m and not m["p"].endswith("roi_heads.") and not m["p"].startswith("roi_heads."):
                    found[m["p"]] += 1
            if not found:
                continue
            stem_prefixes = [p for p in found if p + "stem.conv1.weight" in model]
            prefix = stem_prefixes[0] if stem_prefixes else found.most_common(1)[0][0]
            selected = {k: k[len(prefix):] for k, v in model.items()
                        if k.startswith(prefix) and is_tensor(v)
                        and re.match(r"(stem\.|res[2-5]\.)", k[len(prefix):])}
            where = _where(container, prefix)
            if not any(n.startswith("res5.") for n in selected.values()):
                outer = prefix[:-len("backbone.")] if prefix.endswith("backbone.") else prefix
                res5 = {k: k[len(outer) + len("roi_heads."):] for k, v in model.items()
                        if k.startswith(outer + "roi_heads.res5.") and is_tensor(v)}
                if res5:
                    selected.update(res5)
                    where += f" + {_where(container, outer + 'roi_heads.res5.')}"
            return Location(where, container, selected, "detectron2")
        return None


class _Caffe2Layout(Layout):
    """Caffe2 blob names, at the top level or under ``blobs`` / ``model``."""

    def _search(self, ckpt, containers, prefixes):
        pattern = re.compile(r"^(conv1_w|res_conv1_bn_\w+|res[2-5]_\d+_branch(1|2[abc])_\w+)$")
        for container in containers:
            model = find_mapping(ckpt, container)
            if model is None or not any(isinstance(k, str) and pattern.match(k) for k in model):
                continue
            selected = {k: k for k, v in model.items() if isinstance(k, str) and pattern.match(k)
                        and is_tensor(v) and not k.endswith("_momentum")}
            return Location(_where(container, ""), container, selected, "caffe2")
        return None


LAYOUT_ORDER = (
    Layout("pretrain", "this project's pretraining checkpoint: state_dict['encoder_q.*' or 'encoder.*'] "
           "with 'method' and 'arch'", containers=(("state_dict",),), prefixes=("encoder_q.", "encoder."),
           ema_prefixes=("encoder_k.",), require_top=("state_dict", "method")),
    Layout("moco", "MoCo v1/v2: state_dict['module.encoder_q.*']", containers=(("state_dict",),),
           prefixes=("module.encoder_q.", "encoder_q."), ema_prefixes=("module.encoder_k.", "encoder_k.")),
    Layout("mocov3", "MoCo v3: state_dict['module.base_encoder.*']", containers=(("state_dict",),),
           prefixes=("module.base_encoder.", "base_encoder."),
           ema_prefixes=("module.momentum_encoder.", "momentum_encoder.")),
    Layout("pycontrast", "InfoMin/PyContrast: model['module.encoder.*'] (EMA: model_ema['encoder.*'])",
           containers=(("model",),), prefixes=("module.encoder.",), ema_containers=(("model_ema",),),
           ema_prefixes=("encoder.", "module.encoder.")),
    Layout("solo-learn", "solo-learn: state_dict['backbone.*'] next to projector, momentum_backbone, ...",
           containers=(("state_dict",),), prefixes=("backbone.",), ema_prefixes=("momentum_backbone.",),
           markers=(r"^pytorch-lightning_version$", r"^hyper_parameters$",
                    r"^state_dict\.(projector|momentum_backbone|momentum_projector|classifier|predictor)\.")),
    Layout("mmselfsup", "mmselfsup/mmpretrain: state_dict['backbone.*']", containers=(("state_dict",),),
           prefixes=("backbone.",)),
    Layout("vissl", "VISSL: classy_state_dict.base_model.model.trunk['_feature_blocks.*']",
           containers=(("classy_state_dict", "base_model", "model", "trunk"), ("model", "trunk"),
                       ("model_state_dict",), ()),
           prefixes=("_feature_blocks.", "module._feature_blocks.", "trunk._feature_blocks.")),
    _Detectron2Layout("detectron2", "Detectron2 names (stem.conv1.*, res2.0.conv1.norm.*), as a weights .pkl "
                      "or a trained model", containers=(("model",), ()), names="detectron2"),
    _Caffe2Layout("caffe2", "Caffe2/Detectron1 names (conv1_w, res_conv1_bn_s, res2_0_branch2a_w)",
                  containers=(("blobs",), ("model",), ()), names="caffe2"),
    Layout("timm", "timm training checkpoint: state_dict (EMA: state_dict_ema) with torchvision names",
           containers=(("state_dict",),), prefixes=("", "module."), ema_containers=(("state_dict_ema",),),
           ema_prefixes=("", "module."), resnet_key_needed=True),
    Layout("torchvision", "torchvision state dict (conv1.weight, layer1.0.conv1.weight, ...), plain or "
           "under 'model' (EMA: 'model_ema')", containers=((), ("model",)), prefixes=("", "module."),
           ema_containers=(("model_ema",),), ema_prefixes=("module.", ""), resnet_key_needed=True),
)
_BY_NAME = {layout.name: layout for layout in LAYOUT_ORDER}
LAYOUTS = {layout.name: layout.description for layout in LAYOUT_ORDER}
# CMC's official layout (l_to_ab / ab_to_l) and pretrain.methods.cmc's (encoder_l / encoder_ab)
_CMC_KEY = re.compile(r"(^|\.)(l_to_ab|ab_to_l|encoder_l|encoder_ab)(\.|$)")


def _refuse_cmc(ckpt, paths, source):
    cmc = [p for p, _ in paths if _CMC_KEY.search(p)]
    if not cmc and isinstance(ckpt, dict) and ckpt.get("method") == "cmc":
        cmc = ["method: cmc"]
    if cmc:
        raise ConversionError(f"{source}: a CMC checkpoint (e.g. {cmc[0]}): two encoders on L and ab inputs "
                              "are not an RGB backbone, so it cannot be converted to Detectron2's ResNet")
    gray = [(p, v.shape[1]) for p, v in paths
            if p.endswith("conv1.weight") and v.ndim == 4 and v.shape[1] in (1, 2)]
    if gray:
        raise ConversionError(f"{source}: {gray[0][0]} takes {gray[0][1]} input channel(s), as CMC's L and ab "
                              "encoders do; two encoders on L and ab inputs are not an RGB backbone")


def detect_layout(ckpt, fmt="auto", ema=False, source="the checkpoint"):
    """(:class:`Layout`, :class:`Location`) of the backbone in the checkpoint dict ``ckpt``.

    ``fmt``: a name from :data:`LAYOUTS`, or ``"auto"`` to take the first layout (in :data:`LAYOUT_ORDER`)
    that matches; ``ema``: the EMA/momentum encoder. Raises :class:`ConversionError`.
    """
    paths = list(tensor_paths(ckpt))
    flat = [p for p, _ in paths]
    _refuse_cmc(ckpt, paths, source)
    if fmt not in (None, "auto"):
        if fmt not in _BY_NAME:
            raise ConversionError(f"unknown --format {fmt!r}; choose auto or one of {', '.join(_BY_NAME)}")
        found = _BY_NAME[fmt].find(ckpt, ema)
        if found is None:
            raise ConversionError(f"{source} is not a {fmt} checkpoint ({LAYOUTS[fmt]}); keys seen: "
                                  f"{describe_keys(flat)}")
        return _BY_NAME[fmt], found
    for layout in LAYOUT_ORDER:
        found = layout.find(ckpt, ema)
        if found is not None:
            return layout, found
    if looks_like_vit(flat):
        raise not_resnet_error(source, flat)
    raise ConversionError(f"{source}: unknown checkpoint layout; keys seen: {describe_keys(flat)}; layouts "
                          f"tried: {', '.join(_BY_NAME)} (force one with --format)")
