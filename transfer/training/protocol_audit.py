"""The protocol audit: every shipped transfer config, in every mode, against the protocol it claims.

Each (config, mode) is built as a run of the published setting would be: on the config's reference
hardware (``SOLVER.REFERENCE_WORLD_SIZE`` GPUs with CUDA) with weights of the protocol's backbone
(architecture from the setting, the protocol's first input convention) given as the weights' meta, so
that only what the config itself does remains to differ. ``tools/audit_protocols.py`` prints the table;
the tests require that every difference is a documented deviation.
"""
import dataclasses
import glob
import os

from pretrain.common.paths import CONFIGS_DIR
from transfer.training.config import MODES, config_value, reference_config
from transfer.training.protocol import deviations, load_protocol, protocol_of, setting_info, split_ref

__all__ = ["AuditRow", "shipped_configs", "reference_weights_meta", "audit_config", "audit", "audit_table"]

ARCH_KEYS = ("MODEL.RESNETS.DEPTH", "MODEL.RESNETS.NUM_GROUPS", "MODEL.RESNETS.WIDTH_PER_GROUP",
             "MODEL.RESNETS.STEM_OUT_CHANNELS", "MODEL.RESNETS.RES2_OUT_CHANNELS")


@dataclasses.dataclass
class AuditRow:
    """One shipped config in one mode: the setting it claims (None: none published) and its deviations."""

    config: str
    mode: str
    protocol: str = None
    table: str = ""
    deviations: list = dataclasses.field(default_factory=list)

    @property
    def undocumented(self):
        return [d for d in self.deviations if not d["documented"]]


def shipped_configs():
    """The task configs of configs/transfer/ (not the Base-* files they build on), sorted."""
    paths = glob.glob(os.path.join(CONFIGS_DIR, "transfer", "*.yaml"))
    return sorted(p for p in paths if not os.path.basename(p).startswith("Base-"))


def reference_weights_meta(ref, config):
    """``meta`` of the weights a run of the setting ``ref`` with the config ``config`` uses: the config's
    architecture, unless the protocol prescribes one for every setting (its ``common`` keys: Wu et al.'s
    ResNet-18), with the protocol's first input convention."""
    data = load_protocol(split_ref(ref)[0])
    prescribed = (data.get("common") or {}).get("keys") or {}
    cfg = {key: prescribed.get(key, config_value(config, key)) for key in ARCH_KEYS}
    conventions = data.get("conventions") or {}
    if conventions:
        cfg.update(next(iter(conventions.values()))["keys"])
    return {"cfg": cfg}


def audit_config(path, mode):
    """The :class:`AuditRow` of the config file ``path`` in ``mode``."""
    opts = ["TRANSFER.MODE", mode]
    probe = reference_config(path, opts)
    ref = protocol_of(probe)
    row = AuditRow(os.path.splitext(os.path.basename(path))[0], mode, ref)
    if ref is None:
        return row
    meta = reference_weights_meta(ref, probe)
    depth = meta["cfg"]["MODEL.RESNETS.DEPTH"]
    cfg = reference_config(path, opts + ["MODEL.WEIGHTS", f"reference R-{depth} weights"], weights_meta=meta)
    row.table = setting_info(ref).get("table", "")
    row.deviations = deviations(cfg)
    return row


def audit(paths=None, modes=MODES):
    """:func:`audit_config` of every (config, mode); ``paths`` default to :func:`shipped_configs`."""
    return [audit_config(path, mode) for path in (paths or shipped_configs()) for mode in modes]


def _value(value):
    return "''" if value == "" else str(value)


def audit_table(rows):
    """A plain-text table: one line per (config, mode), one indented line per deviation."""
    width = max([len(r.config) for r in rows] + [6])
    lines = [f"{'config':<{width}}  {'mode':<8}  protocol (paper table)", "-" * (width + 60)]
    for row in rows:
        claim = "no published protocol" if row.protocol is None else row.protocol
        if row.table:
            claim += f" ({row.table})"
        status = ""
        if row.protocol is not None:
            status = f"  [{len(row.deviations)} deviation(s)]" if row.deviations else "  [exact]"
        lines.append(f"{row.config:<{width}}  {row.mode:<8}  {claim}{status}")
        for d in row.deviations:
            mark = "documented" if d["documented"] else "NOT DOCUMENTED"
            lines.append(f"{'':<{width}}    {d['key']}: {_value(d['actual'])} instead of {_value(d['expected'])} "
                         f"[{mark}] {d['why']} (published: {d['source']})")
    undocumented = sum(len(r.undocumented) for r in rows)
    lines.append(f"{len(rows)} config/mode pairs, {sum(r.protocol is not None for r in rows)} with a published "
                 f"protocol, {sum(len(r.deviations) for r in rows)} deviation(s), {undocumented} not documented")
    return "\n".join(lines) + "\n"
