"""Table arithmetic: per task and metric family, backbones x (mode, metric) cells over seeds.

A cell holds the finite values of one backbone's runs of one task and mode for one metric: mean,
sample standard deviation (ddof 1, None when n < 2), the 95% t-interval of the mean (from 3 seeds on),
the delta to the baseline backbone's mean of the same task, mode and metric, and the test of that delta
(:mod:`transfer.report.significance`: paired t-test over shared seeds, else Welch's; none below 3 seeds). Non-finite values are excluded from the cell and flagged; a backbone
with no runs for a (task, mode) is a missing cell, and a seed that other backbones of the task and
mode ran but this one did not is a missing run. Published numbers (``transfer.report.references``) become
extra rows marked as published, with the paper's own gap to its baseline row as their delta, the
spread and number of trials the paper reports, and the test of the gap where both rows have a spread.

Rendering is :mod:`transfer.report.render`'s job; this module only computes.
"""
import math
import statistics
from dataclasses import dataclass, field

from pretrain.common.runs import MODES
from transfer.report.references import arch_of_task, select_references
from transfer.report.runs import deviations_text
from transfer.report.significance import MIN_SEEDS, compare, compare_summaries, t_interval

MODE_LABELS = {"finetune": "fine-tuned", "frozen": "frozen"}
FAMILY_ORDER = ("bbox", "segm", "keypoints", "linear")
FAMILY_LABELS = {"bbox": "boxes (bbox)", "segm": "masks (segm)", "keypoints": "keypoints",
                 "linear": "linear classification (top-1/top-5 %)"}
METRIC_ORDER = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "top1", "top5")
DEFAULT_METRICS = ("AP", "AP50", "AP75")
# families whose numbers are not APs (linear evaluation, task linear_<dataset>: pretrain/evaluation/linear_eval.py)
# show these when the metrics asked for are the default ones
FAMILY_DEFAULT_METRICS = {"linear": ("top1", "top5")}
HIGHLIGHT = 0.5  # the papers' green: a gap of at least +0.5 point


def _ordered(names, order):
    names = set(names)
    return [n for n in order if n in names] + sorted(names - set(order))


@dataclass
class Cell:
    """Our runs' numbers for one (task, family, metric, backbone, mode)."""

    task: str
    family: str
    metric: str
    backbone: str
    mode: str
    values: tuple = ()  # finite values, in seed order
    seeds: tuple = ()  # seeds of ``values``
    nonfinite_seeds: tuple = ()  # runs whose value was non-finite (excluded)
    missing_seeds: tuple = ()  # seeds other backbones ran for this task and mode, this one not
    mean: float = None
    std: float = None  # sample std, ddof 1; None when n < 2
    delta: float = None  # mean minus the baseline's mean; None without a baseline (0.0 for the baseline)
    ci: tuple = None  # (low, high): 95% t-interval of the mean; None below MIN_SEEDS seeds
    comparison: object = None  # significance.Comparison of the delta; None for the baseline / no baseline
    # runs that depart from the protocol they claim (Run.protocol_alterations): "seed 0 (claims P): why; why"
    off_protocol: tuple = ()
    unrecorded_seeds: tuple = ()  # seeds of runs whose results.json records no protocol (older results)

    @property
    def n(self):
        return len(self.values)

    @property
    def few_seeds(self):
        """Fewer than MIN_SEEDS seeds: no interval and no test are claimed."""
        return self.n < MIN_SEEDS

    @property
    def flagged(self):
        return bool(self.nonfinite_seeds)


@dataclass
class PublishedCell:
    """A published number (:class:`transfer.report.references.Reference`) in a table."""

    reference: object
    exact: bool = True  # False: filed under a similar task (e.g. another LVIS release)
    comparison: object = None  # significance.Comparison of the paper's gap (set when the table is built)

    @property
    def mean(self):
        return self.reference.value

    @property
    def delta(self):
        return self.reference.delta

    @property
    def std(self):
        """The run-to-run std the paper reports for this number, or None."""
        return self.reference.std

    @property
    def n(self):
        """The number of runs the paper averaged, or None where it does not say."""
        return self.reference.trials

    @property
    def ci(self):
        return t_interval(self.mean, self.std, self.n) if self.n and self.n >= MIN_SEEDS else None


@dataclass
class Row:
    backbone: str
    label: str
    cells: dict = field(default_factory=dict)  # {(mode, metric): Cell | PublishedCell | None}
    is_baseline: bool = False
    published: bool = False
    citation: str = ""  # "InfoMin Table 2(a)" for published rows
    extra: dict = field(default_factory=dict)  # {column: value} (e.g. an MI estimate per backbone)


@dataclass
class Table:
    task: str
    family: str
    modes: tuple
    metrics: tuple
    rows: list
    baseline: str = None
    extra_columns: tuple = ()
    missing: list = field(default_factory=list)  # ["supervised frozen (seeds 0, 1)", "moco fine-tuned seed 2"]
    missing_runs: int = 0  # runs the missing entries stand for (a cell without runs: the seeds others ran, or 1)
    nonfinite: list = field(default_factory=list)  # ["moco fine-tuned seed 1 (AP, AP50)"]
    # runs that depart from their claimed protocol, those with the same claim and reasons in one entry:
    # "moco fine-tuned seeds 0, 1; random fine-tuned seed 0 (claims P): why"
    off_protocol: list = field(default_factory=list)
    # (claim, reasons) -> {"backbone mode": [seeds]}, in the order met; the entries above are made from it
    off_protocol_runs: dict = field(default_factory=dict)
    unrecorded: list = field(default_factory=list)  # ["moco frozen seeds 0, 1"]: protocol not recorded
    notes: list = field(default_factory=list)  # other remarks (baseline without runs, similar-task refs)
    decimals: int = 1  # of our cells
    published_decimals: int = 1  # of published cells: the papers print one decimal

    @property
    def title(self):
        return f"{self.task} - {self.family}"

    def our_rows(self):
        return [r for r in self.rows if not r.published]

    def published_rows(self):
        return [r for r in self.rows if r.published]

    def cells(self):
        """Every :class:`Cell` of our runs (missing ones excluded), in table order."""
        return [row.cells[(mode, metric)] for row in self.our_rows() for mode in self.modes
                for metric in self.metrics if row.cells.get((mode, metric)) is not None]


def summarize(values):
    """(mean, sample std with ddof 1 or None) of finite values; (None, None) for none."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std


def auto_decimals(numbers):
    """One decimal, as the papers, unless every number is below 1 (tiny CPU runs): then three."""
    finite = [abs(x) for x in numbers if x is not None and math.isfinite(x)]
    return 1 if not finite or max(finite) >= 1 else 3


def _table_archs(runs, task, mode, reference_arch):
    if reference_arch:
        return {reference_arch}
    archs = {r.arch for r in runs if r.task == task and r.mode == mode and r.arch}
    return archs or {arch_of_task(task)}


def build_table(task, family, runs, modes, metrics, baseline=None, references=None, reference_arch=None,
                extra=None, arch_runs=None):
    """One :class:`Table` from the runs of ``task`` (``runs`` may hold other tasks; they are ignored).

    ``metrics``: the metric names to show, in order. ``references``: loaded references (or None);
    ``reference_arch`` overrides the architecture published rows must match (default: the runs'
    architecture from their config.yaml, else the one the task's name says; ``arch_runs``: the runs that
    tell, default ``runs``). ``extra``: optional per-backbone scalar columns, ``{column: {backbone: value}}``.
    """
    runs = [r for r in runs if r.task == task]
    arch_runs = runs if arch_runs is None else [r for r in arch_runs if r.task == task]
    extra = extra or {}
    backbones = sorted({r.backbone for r in runs}, key=lambda b: (b != baseline, b.lower(), b))
    table = Table(task=task, family=family, modes=tuple(modes), metrics=tuple(metrics), rows=[], baseline=baseline,
                  extra_columns=tuple(extra))
    # seeds any backbone ran for this task and mode (with this family): the others are expected to as well
    expected = {mode: {r.seed for r in runs if r.mode == mode and family in r.metrics} for mode in modes}
    for backbone in backbones:
        row = Row(backbone=backbone, label=backbone, is_baseline=backbone == baseline,
                  extra={col: vals.get(backbone) for col, vals in extra.items()})
        for mode in modes:
            mine = sorted((r for r in runs if r.backbone == backbone and r.mode == mode), key=lambda r: r.seed)
            with_family = [r for r in mine if family in r.metrics]
            if not with_family:
                seeds = sorted(expected[mode])
                table.missing_runs += max(1, len(seeds))
                what = f"seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else (
                    f"seed {seeds[0]}" if seeds else "no runs")
                table.missing.append(f"{backbone} {MODE_LABELS[mode]} ({what})")
                for metric in metrics:
                    row.cells[(mode, metric)] = None
                continue
            off, unrecorded = _protocol_notes(table, backbone, mode, with_family)
            missing = sorted(expected[mode] - {r.seed for r in with_family})
            table.missing_runs += len(missing)
            table.missing.extend(f"{backbone} {MODE_LABELS[mode]} seed {s}" for s in missing)
            bad = {}
            for metric in metrics:
                finite = [(r.seed, r.value(family, metric)) for r in with_family
                          if r.value(family, metric) is not None and math.isfinite(r.value(family, metric))]
                nonfinite = tuple(r.seed for r in with_family
                                  if r.value(family, metric) is not None and not math.isfinite(r.value(family, metric)))
                for s in nonfinite:
                    bad.setdefault(s, []).append(metric)
                values = tuple(v for _, v in finite)
                mean, std = summarize(values)
                ci = t_interval(mean, std, len(values)) if len(values) >= MIN_SEEDS else None
                row.cells[(mode, metric)] = Cell(task=task, family=family, metric=metric, backbone=backbone, mode=mode,
                                                 values=values, seeds=tuple(s for s, _ in finite),
                                                 nonfinite_seeds=nonfinite, missing_seeds=tuple(missing),
                                                 mean=mean, std=std, ci=ci, off_protocol=off,
                                                 unrecorded_seeds=unrecorded)
            table.nonfinite.extend(f"{backbone} {MODE_LABELS[mode]} seed {s} ({', '.join(ms)})"
                                   for s, ms in sorted(bad.items()))
        table.rows.append(row)
    if baseline is not None:
        _apply_deltas(table, baseline)
    if references:
        _add_published(table, arch_runs, references, reference_arch)
    # our numbers set the precision (tiny CPU runs need more digits); published ones keep the papers' one
    numbers = [c.mean for c in table.cells() if c.mean is not None]
    if not numbers:
        numbers = [c.mean for row in table.published_rows() for c in row.cells.values() if c is not None]
    table.decimals = auto_decimals(numbers)
    return table


def _protocol_notes(table, backbone, mode, runs):
    """Note the runs of one (backbone, mode) that depart from their claimed protocol, or record none, in
    ``table``; returns (per departing run its seed, claim and reasons; the seeds without a record) for the cells."""
    who = f"{backbone} {MODE_LABELS[mode]}"
    off = []
    for r in runs:
        if r.protocol_alterations():
            reasons = deviations_text(r.protocol_alterations())
            off.append(f"seed {r.seed} (claims {r.protocol}): {reasons}")
            table.off_protocol_runs.setdefault((r.protocol, reasons), {}).setdefault(who, []).append(r.seed)
    table.off_protocol[:] = [_off_protocol_entry(claim, reasons, by_who)
                             for (claim, reasons), by_who in table.off_protocol_runs.items()]
    unrecorded = tuple(r.seed for r in runs if not r.protocol_recorded)
    if unrecorded:
        table.unrecorded.append(f"{who} seed{'s' if len(unrecorded) > 1 else ''} {', '.join(map(str, unrecorded))}")
    return tuple(off), unrecorded


def _off_protocol_entry(claim, reasons, by_who):
    runs = "; ".join(f"{who} seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
                     for who, seeds in by_who.items())
    return f"{runs} (claims {claim}): {reasons}"


def _apply_deltas(table, baseline):
    base = next((row for row in table.rows if row.backbone == baseline), None)
    for mode in table.modes:
        for metric in table.metrics:
            ref = base.cells.get((mode, metric)) if base else None
            if ref is None or ref.mean is None:
                continue
            for row in table.rows:
                cell = row.cells.get((mode, metric))
                if cell is not None and cell.mean is not None:
                    cell.delta = cell.mean - ref.mean
                    if row is not base:
                        cell.comparison = compare(cell.values, cell.seeds, ref.values, ref.seeds)
    for mode in table.modes:
        if base is None or all(base.cells.get((mode, m)) is None for m in table.metrics):
            if any(row.cells.get((mode, m)) is not None for row in table.rows for m in table.metrics):
                table.notes.append(f"baseline {baseline} has no {MODE_LABELS[mode]} runs of this task: "
                                   f"no {MODE_LABELS[mode]} deltas")


def _add_published(table, runs, references, reference_arch):
    rows = {}
    for mode in table.modes:
        archs = _table_archs(runs, table.task, mode, reference_arch)
        for ref, exact in select_references(references, table.task, mode=mode, archs=archs):
            if ref.family != table.family or ref.metric not in table.metrics:
                continue
            key = (ref.paper, ref.table, ref.backbone)
            if key not in rows:
                label = ref.label
                citation = ref.citation + ("" if exact else f", on {ref.task}")
                rows[key] = (ref.order, Row(backbone=ref.backbone, label=label, published=True, citation=citation,
                                            is_baseline=ref.is_baseline))
                if not exact:
                    note = (f"{ref.citation} was published for {ref.task}, a similar but not identical setting; "
                            f"shown for comparison")
                    if note not in table.notes:
                        table.notes.append(note)
            rows[key][1].cells[(mode, ref.metric)] = PublishedCell(reference=ref, exact=exact)
    _test_published_gaps(rows)
    table.rows.extend(row for _, row in sorted(rows.values(), key=lambda x: (x[1].citation, x[0])))


def _test_published_gaps(rows):
    """Each published gap against the paper's baseline row of the same (sub)table, from the means, spreads
    and trials the paper reports (Welch's t-test; ``no_spread`` where a row has none)."""
    by_key = {key: row for key, (_, row) in rows.items()}
    for (paper, table_name, _), (_, row) in rows.items():
        if row.is_baseline:
            continue
        for (mode, metric), cell in row.cells.items():
            ref = cell.reference
            base_row = by_key.get((paper, table_name, ref.baseline)) if ref.baseline else None
            base = base_row.cells.get((mode, metric)) if base_row else None
            if base is None or ref.delta is None:
                continue
            cell.comparison = compare_summaries(cell.mean, cell.std, cell.n, base.mean, base.std, base.n)


def build_tables(collection, baseline=None, metrics=DEFAULT_METRICS, tasks=None, references=None,
                 reference_arch=None, extra=None):
    """Every table of a :class:`~transfer.report.runs.Collection`, ordered by task then family.

    ``metrics``: names to show (those no run or reference reports are dropped), or ``"all"``.
    ``tasks``: only these (a task without runs still gets its published rows when ``references``).
    Column groups are the modes present anywhere in the collection (both when there are no runs).
    """
    runs = collection.runs
    modes = tuple(collection.modes()) or MODES
    wanted = list(tasks) if tasks else collection.tasks()
    tables = []
    for task in wanted:
        task_runs = [r for r in runs if r.task == task]
        task_refs = [ref for ref, _ in select_references(references or [], task)] if references else []
        families = _ordered({f for r in task_runs for f in r.metrics} | {ref.family for ref in task_refs}, FAMILY_ORDER)
        for family in families:
            present = {m for r in task_runs for m in r.metrics.get(family, {})}
            present |= {ref.metric for ref in task_refs if ref.family == family}
            if metrics == "all":
                names = _ordered(present, METRIC_ORDER)
            else:
                wanted = FAMILY_DEFAULT_METRICS.get(family, metrics) if tuple(metrics) == DEFAULT_METRICS else metrics
                names = [m for m in wanted if m in present]
            if not names:
                continue
            # a family no run of the task reports (only published numbers have it): published rows only
            ours = any(family in r.metrics for r in task_runs)
            table = build_table(task, family, task_runs if ours else [], modes, names, baseline=baseline,
                                references=references, reference_arch=reference_arch, extra=extra,
                                arch_runs=task_runs)
            if table.rows:
                tables.append(table)
    return tables
