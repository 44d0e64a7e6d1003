"""Published transfer protocols as data, and where a run's effective config departs from the one it claims.

The settings of each protocol are transcribed, key by key and each with its source, in
``configs/protocols/<protocol>.yaml`` (format in ``configs/protocols/wu2020.yaml``): Detectron2 v0.6's
model-zoo files, Wu et al. 2020 (B.5), InfoMin (PyContrast's configs), MoCo. A config claims one setting
per mode: ``TRANSFER.PROTOCOL.FINETUNE`` / ``TRANSFER.PROTOCOL.FROZEN`` = ``"<protocol>:<setting>"``.

What a setting expects of every config key: Detectron2 v0.6's default, overlaid by the setting's keys
(its ``base`` chain first), overlaid by the protocol's ``common`` keys. The weights' input convention
(``INPUT.FORMAT``, pixel mean/std, ``STRIDE_IN_1X1``) must match one of the protocol's ``conventions``.

:func:`protocol_of` names the setting a run claims; :func:`deviations` lists every key in which the run
differs from it (``{key, expected, actual, source, why, documented}``): ``documented`` deviations carry the
reason given in the protocol's file (or are the linear scaling rule); the others get a generic reason
(shortened schedule, changed head, ...). Keys that do not change what is trained or measured
(:data:`BOOKKEEPING_KEYS`) are not compared. :mod:`transfer.training.protocol_audit` runs this over every
shipped config.
"""
import dataclasses
import functools
import os

from pretrain.common.paths import CONFIGS_DIR
from pretrain.common.yamlio import read_yaml
from transfer.training.config import ConfigError, flatten, get_transfer_cfg, same_value
from transfer.training.heads import published_head_name

__all__ = ["PROTOCOLS_DIR", "CONVENTION_KEYS", "BOOKKEEPING_KEYS", "ProtocolError", "Expected", "load_protocol",
           "split_ref", "setting_info", "published_settings", "expected_config", "protocol_of", "deviations",
           "comparable_values", "protocol_fields", "describe"]

PROTOCOLS_DIR = os.path.join(CONFIGS_DIR, "protocols")
DEFAULT_SOURCE = "Detectron2 v0.6 default (detectron2/config/defaults.py)"
CONVENTION_KEYS = ("INPUT.FORMAT", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "MODEL.RESNETS.STRIDE_IN_1X1")
# what does not change the trained model or its measurement: where things are written, how often, the
# device and loader workers, the seed, the hardware the config was written for (the batch it implies is
# compared), the claim itself and the project's C4-head switches (compared through the head they build)
BOOKKEEPING_KEYS = frozenset({
    "MODEL.WEIGHTS", "MODEL.DEVICE", "OUTPUT_DIR", "SEED", "CUDNN_BENCHMARK", "VIS_PERIOD", "VERSION",
    "GLOBAL.HACK", "DATALOADER.NUM_WORKERS", "SOLVER.CHECKPOINT_PERIOD", "TEST.EVAL_PERIOD",
    "SOLVER.REFERENCE_WORLD_SIZE"})
# norm names that compute the same statistics (all processes' samples weighted alike) in another way
SAME_NORM = {"naiveSyncBN_N": "SyncBN", "nnSyncBN": "SyncBN"}
SCALED_KEYS = ("SOLVER.BASE_LR", "SOLVER.MAX_ITER", "SOLVER.STEPS", "SOLVER.WARMUP_ITERS")
GENERIC_WHY = (("SOLVER.STEPS", "changed learning-rate steps"), ("SOLVER.WARMUP", "changed warm-up"),
               ("SOLVER.CLIP_GRADIENTS", "gradient clipping changed"), ("SOLVER.", "changed optimisation"),
               ("MODEL.ROI_HEADS.NAME", "another ROI head"), ("MODEL.ROI_", "changed head"),
               ("MODEL.RPN.", "changed RPN"), ("MODEL.FPN.", "changed FPN"),
               ("MODEL.RESNETS.", "another backbone architecture"), ("MODEL.BACKBONE.", "changed backbone"),
               ("INPUT.", "changed input"), ("DATASETS.", "other datasets"),
               ("DATALOADER.", "changed data sampling"), ("TEST.", "changed evaluation"), ("", "changed setting"))


class ProtocolError(ConfigError):
    """A protocol file or a claim that cannot be read, in one line."""


@dataclasses.dataclass(frozen=True)
class Expected:
    """A published value and where it is published."""

    value: object
    source: str


@functools.lru_cache(maxsize=None)
def load_protocol(name):
    """The data of ``configs/protocols/<name>.yaml``."""
    path = os.path.join(PROTOCOLS_DIR, f"{name}.yaml")
    if not os.path.isfile(path):
        known = sorted(f[:-5] for f in os.listdir(PROTOCOLS_DIR) if f.endswith(".yaml"))
        raise ProtocolError(f"no protocol {name!r} (configs/protocols/ has {', '.join(known)})")
    data = read_yaml(path, ProtocolError)
    if not isinstance(data, dict) or data.get("name") != name or not isinstance(data.get("settings"), dict):
        raise ProtocolError(f"{path}: needs 'name: {name}' and a 'settings' mapping")
    return data


def split_ref(ref):
    """``"<protocol>:<setting>"`` -> (protocol, setting)."""
    protocol, sep, setting = str(ref).partition(":")
    if not sep or not protocol or not setting:
        raise ProtocolError(f"protocol reference {ref!r} is not '<protocol>:<setting>'")
    return protocol, setting


def setting_info(ref):
    """The entry of a setting in its protocol's file (``file``, ``base``, ``table``, ``keys``)."""
    protocol, setting = split_ref(ref)
    settings = load_protocol(protocol)["settings"]
    if setting not in settings:
        raise ProtocolError(f"configs/protocols/{protocol}.yaml has no setting {setting!r}")
    return settings[setting]


def _expected(value, source):
    if isinstance(value, dict):
        return Expected(value["value"], value.get("source", source))
    return Expected(value, source)


def _setting_keys(ref, seen=()):
    if ref in seen:
        raise ProtocolError(f"setting {ref}: its base chain loops back to it")
    protocol, setting = split_ref(ref)
    info = setting_info(ref)
    keys = {}
    base = info.get("base")
    if base:
        keys.update(_setting_keys(base if ":" in base else f"{protocol}:{base}", (*seen, ref)))
    source = info.get("file", ref)
    keys.update({key: _expected(value, source) for key, value in (info.get("keys") or {}).items()})
    return keys


def published_settings(ref):
    """{key: Expected} of the keys a setting publishes: its base chain, its own keys, the protocol's ``common``."""
    keys = _setting_keys(ref)
    common = load_protocol(split_ref(ref)[0]).get("common") or {}
    keys.update({key: _expected(value, common.get("source", ref)) for key, value in (common.get("keys") or {}).items()})
    return keys


@functools.lru_cache(maxsize=1)
def _defaults():
    return {key: value for key, value in flatten(get_transfer_cfg()).items() if not key.startswith("TRANSFER.")}


def expected_config(ref):
    """{key: Expected} for every Detectron2 key: its default unless the setting publishes another value."""
    expected = {key: Expected(value, DEFAULT_SOURCE) for key, value in _defaults().items()}
    expected.update(published_settings(ref))
    return expected


def protocol_of(cfg):
    """The ``"<protocol>:<setting>"`` the run claims for its ``TRANSFER.MODE``, or None (no published protocol)."""
    mode = cfg.TRANSFER.MODE
    ref = cfg.TRANSFER.PROTOCOL.get(mode.upper(), "")
    if not ref:
        return None
    setting_info(ref)
    protocol_mode = load_protocol(split_ref(ref)[0]).get("mode")
    if protocol_mode != mode:
        raise ProtocolError(f"TRANSFER.PROTOCOL.{mode.upper()} {ref!r}: that protocol is run in mode {protocol_mode}")
    return ref


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _same(key, expected, actual):
    if key.endswith("NORM"):
        expected, actual = SAME_NORM.get(expected, expected), SAME_NORM.get(actual, actual)
    return same_value(expected, actual)


class _Recorder:
    """Collects deviation records, explaining each by the protocol's documented deviations when it can."""

    def __init__(self, ref):
        self.protocol, self.setting = split_ref(ref)
        self.documented = load_protocol(self.protocol).get("deviations") or []
        self.records = []

    def add(self, key, expected, actual, source, why=None, documented=False):
        for entry in self.documented:
            if (entry.get("key") == key and self.setting in entry.get("settings", [self.setting])
                    and ("value" not in entry or _same(key, entry["value"], actual))):
                why, documented = " ".join(str(entry["why"]).split()), True
                break
        if why is None:
            why = _generic_why(key, expected, actual)
        self.records.append({"key": key, "expected": _plain(expected), "actual": _plain(actual),
                             "source": source, "why": why, "documented": documented})


def _generic_why(key, expected, actual):
    if key == "SOLVER.MAX_ITER" and isinstance(actual, int) and isinstance(expected, int):
        return "shortened schedule" if actual < expected else "longer schedule"
    if key.endswith("NORM"):
        return "changed normalisation"
    return next(why for prefix, why in GENERIC_WHY if key.startswith(prefix))


def _check_convention(cfg, actual, data, recorder):
    conventions = data.get("conventions") or {}
    if not conventions:
        return
    names = list(conventions)
    if not cfg.MODEL.WEIGHTS and data.get("random_init"):
        names = [data["random_init"]]
    for name in names:
        if all(_same(k, conventions[name]["keys"][k], actual[k]) for k in CONVENTION_KEYS):
            return
    target = conventions[names[0]]
    for key in CONVENTION_KEYS:
        if not _same(key, target["keys"][key], actual[key]):
            recorder.add(key, target["keys"][key], actual[key], target["source"])


def _check_batch(expected, actual, recorder):
    """Record a batch other than the published one; return the solver keys the linear rule explains."""
    key = "SOLVER.IMS_PER_BATCH"
    published, batch = expected[key].value, actual[key]
    if batch == published:
        return set()
    factor = batch / published
    lr, iters, steps, warmup = (expected[k].value for k in SCALED_KEYS)
    scaled = {"SOLVER.BASE_LR": lr * factor, "SOLVER.MAX_ITER": int(round(iters / factor)),
              "SOLVER.STEPS": tuple(int(round(s / factor)) for s in steps),
              "SOLVER.WARMUP_ITERS": int(round(warmup / factor))}
    if same_value(actual["SOLVER.BASE_LR"], scaled["SOLVER.BASE_LR"]):
        recorder.add(key, published, batch, expected[key].source, documented=True,
                     why=f"linear scaling rule: {batch} images per step instead of {published}, learning rate "
                         f"x{factor:g} and the iterations, LR steps and warm-up /{factor:g} (same epochs)")
        return {k for k, v in scaled.items() if same_value(actual[k], v)}
    recorder.add(key, published, batch, expected[key].source,
                 why=f"batch of {batch} images instead of {published} without the linear rescaling of the "
                     "learning rate")
    return set()


def comparable_values(cfg):
    """The run's config keys as compared with a protocol: the C4 head under its published name."""
    values = {key: value for key, value in flatten(cfg).items() if not key.startswith("TRANSFER.")}
    values["MODEL.ROI_HEADS.NAME"] = published_head_name(cfg)
    return values


def deviations(cfg):
    """Every setting in which the effective config ``cfg`` differs from the protocol it claims (a list of
    ``{key, expected, actual, source, why, documented}``; [] without a claim). See the module docstring."""
    ref = protocol_of(cfg)
    if ref is None:
        return []
    data = load_protocol(split_ref(ref)[0])
    expected = expected_config(ref)
    actual = comparable_values(cfg)
    recorder = _Recorder(ref)
    _check_convention(cfg, actual, data, recorder)
    explained = _check_batch(expected, actual, recorder)
    skip = BOOKKEEPING_KEYS | set(CONVENTION_KEYS) | explained | {"SOLVER.IMS_PER_BATCH"}
    for key in sorted(expected):
        if key in skip or key not in actual:
            continue
        if not _same(key, expected[key].value, actual[key]):
            recorder.add(key, expected[key].value, actual[key], expected[key].source)
    return recorder.records


def protocol_fields(cfg):
    """``{"protocol": ..., "deviations": [...]}`` for a run's results.json (docs/artifacts.md)."""
    return {"protocol": protocol_of(cfg), "deviations": deviations(cfg)}


def describe(cfg):
    """Comment lines naming the claimed protocol and every deviation (for ``--print-config``)."""
    ref = protocol_of(cfg)
    if ref is None:
        return f"# protocol: none published for TRANSFER.MODE {cfg.TRANSFER.MODE}\n"
    info = setting_info(ref)
    title = load_protocol(split_ref(ref)[0]).get("title", "")
    table = f", {info['table']}" if info.get("table") else ""
    lines = [f"# protocol: {ref} ({title}{table})"]
    found = deviations(cfg)
    lines += [f"# deviation: {d['key']} {d['actual']!r} instead of {d['expected']!r} ({d['source']}): {d['why']}"
              + ("" if d["documented"] else " [not documented]") for d in found]
    if not found:
        lines.append("# deviations: none")
    return "\n".join(lines) + "\n"
