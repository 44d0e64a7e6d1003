"""The papers' numbers in configs/references/: they load, and they match the paper text they came from.

The transcription checks read the papers' text files (``../shared/papers`` next to the repository)
themselves, so they are independent of the YAML; they are skipped where those files are absent.
"""
import os
import re

import pytest

from transfer.report.references import (ReferenceError, arch_from_config, arch_of_task, find_references, load_reference_file,
                                 load_references, select_references)
from pretrain.common.paths import REPO_ROOT

REPO = REPO_ROOT
PAPERS = os.environ.get("SSL_D2_PAPERS", os.path.join(os.path.dirname(REPO), "shared", "papers"))
INFOMIN_TXT = os.path.join(PAPERS, "infomin_what_makes_good_views.txt")
WU_TXT = os.path.join(PAPERS, "wu2020_mutual_information_contrastive.txt")
TASKS = {os.path.splitext(n)[0] for n in os.listdir(os.path.join(REPO, "configs", "transfer"))
         if n.endswith(".yaml") and not n.startswith("Base-")}
# linear evaluation: task linear_<dataset>, one config per dataset in configs/linear/
TASKS |= {"linear_" + os.path.splitext(n)[0] for n in os.listdir(os.path.join(REPO, "configs", "linear"))
          if n.endswith(".yaml")}


@pytest.fixture(scope="module")
def refs():
    return load_references()


def _one(refs, **criteria):
    found = find_references(refs, **criteria)
    assert len(found) == 1, (criteria, found)
    return found[0]


def test_references_load_and_name_our_tasks(refs):
    assert len(refs) > 300
    assert {r.paper for r in refs} == {"InfoMin", "Wu2020"}
    for r in refs:
        assert r.task in TASKS, r
        assert set(r.similar_tasks) <= TASKS, r
    # InfoMin: fine-tuned, the architecture its task names; Wu et al.: frozen ResNet-18 through R-50 configs
    for r in find_references(refs, paper="InfoMin"):
        assert r.mode == "finetune" and r.arch == arch_of_task(r.task), r
    for r in find_references(refs, paper="Wu2020"):
        assert r.mode == "frozen" and r.arch == "R-18", r
        assert arch_of_task(r.task) == "R-50" or (r.task.startswith("linear_") and r.family == "linear"), r


def test_known_cells(refs):
    assert _one(refs, table="Table 2(a)", backbone="infomin", family="bbox", metric="AP").value == 40.6
    assert _one(refs, table="Table 2(a)", backbone="random", family="segm", metric="AP50").value == 47.9  # "479"
    assert _one(refs, table="Table 2(b)", backbone="supervised", family="bbox", metric="AP75").value == 45.3  # "453"
    assert _one(refs, paper="Wu2020", table="Table 2(f)", backbone="ann+", family="bbox", metric="AP").value == 10.7
    kp = _one(refs, paper="Wu2020", table="Table 2(g)", backbone="la", family="keypoints", metric="AP50")
    assert kp.value == 65.3
    # VOC: the paper's columns are AP50, AP, AP75
    voc = {r.metric: r.value for r in find_references(refs, table="Table 3", backbone="infomin")}
    assert voc == {"AP50": 82.7, "AP": 57.6, "AP75": 64.6}
    moco = _one(refs, table="Table 3", backbone="moco_v1", metric="AP")
    assert moco.value == 55.9 and moco.origin.startswith("MoCo")
    x152 = _one(refs, table="Table 13(a)", backbone="infomin", family="segm", metric="AP75")
    assert x152.value == 44.4 and x152.task == "coco_mask_rcnn_X_152_32x8d_FPN_1x"


def test_published_gaps(refs):
    ref = _one(refs, table="Table 2(a)", backbone="infomin", family="bbox", metric="AP")
    assert ref.delta == pytest.approx(0.9) and not ref.is_baseline
    base = _one(refs, table="Table 2(a)", backbone="supervised", family="bbox", metric="AP")
    assert base.is_baseline and base.delta == 0
    assert all(r.delta is None for r in find_references(refs, paper="Wu2020"))


def test_published_spreads(refs):
    """MoCo's detection README: VOC numbers are means of 5 trials, std 0.2 / 0.2 / 0.4 (AP50 / AP / AP75) for
    the supervised, MoCo v1 and MoCo v2 rows; InfoMin's Table 3 averages 5 runs and states no spread."""
    for backbone in ("supervised", "moco_v1", "moco_v2"):
        stds = {r.metric: r.std for r in find_references(refs, table="Table 3", backbone=backbone)}
        assert stds == {"AP50": 0.2, "AP": 0.2, "AP75": 0.4}, backbone
        assert all("detection/README.md" in r.spread_source
                   for r in find_references(refs, table="Table 3", backbone=backbone))
    for backbone in ("random", "instdis", "pirl", "infomin"):
        assert all(r.std is None and r.spread_source is None
                   for r in find_references(refs, table="Table 3", backbone=backbone))
    assert {r.trials for r in find_references(refs, table="Table 3")} == {5}
    # no other table states its trials or spread
    assert all(r.trials is None and r.std is None for r in refs if r.table != "Table 3")


def test_voc_trials_match_the_paper_text():
    text = _require(INFOMIN_TXT)
    assert re.search(r"Pascal VOC object detection.*?average of 5 runs", text, re.S)


def test_selection_by_architecture_and_similar_task(refs):
    task = "coco_mask_rcnn_R_50_FPN_1x"
    r50 = {r.paper for r, _ in select_references(refs, task, archs={"R-50"})}
    r18 = {r.paper for r, _ in select_references(refs, task, archs={"R-18"})}
    assert r50 == {"InfoMin"} and r18 == {"Wu2020"}
    v1 = select_references(refs, "lvis_mask_rcnn_R_50_FPN_1x", mode="frozen", archs="R-18")
    assert v1 and all(not exact and r.task == "lvis_v0.5_mask_rcnn_R_50_FPN_1x" for r, exact in v1)
    v05 = select_references(refs, "lvis_v0.5_mask_rcnn_R_50_FPN_1x", mode="frozen", archs="R-18")
    assert len(v05) == len(v1) and all(exact for _, exact in v05)
    assert not select_references(refs, "lvis_mask_rcnn_R_50_FPN_1x", include_similar=False)


def test_arch_names():
    assert arch_of_task("coco_mask_rcnn_R_101_C4_2x") == "R-101"
    assert arch_of_task("coco_mask_rcnn_X_152_32x8d_FPN_1x") == "X-152-32x8d"
    assert arch_of_task("lvis_v0.5_mask_rcnn_R_50_FPN_1x") == "R-50"
    assert arch_of_task("something_else") is None
    assert arch_from_config({"MODEL": {"RESNETS": {"DEPTH": 18, "NUM_GROUPS": 1}}}) == "R-18"
    x101 = {"MODEL": {"RESNETS": {"DEPTH": 101, "NUM_GROUPS": 32, "WIDTH_PER_GROUP": 8}}}
    assert arch_from_config(x101) == "X-101-32x8d"
    assert arch_from_config({"MODEL": {}}) is None


@pytest.mark.parametrize("text, message", [
    ("paper: P\ntables:\n- {table: T, setting: s, task: t, mode: tuned, arch: R-50, columns: [bbox.AP],"
     " rows: [{backbone: a, values: [1.0]}]}\n", "`mode` must be one of"),
    ("paper: P\ntables:\n- {table: T, setting: s, task: t, mode: frozen, arch: R-50, columns: [bbox.AP, bbox.AP50],"
     " rows: [{backbone: a, values: [1.0]}]}\n", "must list 2 numbers"),
    ("paper: P\ntables:\n- {table: T, setting: s, task: t, mode: frozen, arch: R-50, columns: [box.AP],"
     " rows: [{backbone: a, values: [1.0]}]}\n", "is not FAMILY.METRIC"),
    ("paper: P\ntables:\n- {table: T, setting: s, task: t, mode: frozen, arch: R-50, baseline: b, columns: [bbox.AP],"
     " rows: [{backbone: a, values: [1.0]}]}\n", "`baseline` 'b' is not one of the rows"),
    ("paper: P\ntables: [\n", "cannot read"),
    ("paper: P\ntables:\n- {table: T, setting: s, task: t, mode: frozen, arch: R-50, columns: [bbox.AP], trials: 0,"
     " rows: [{backbone: a, values: [1.0]}]}\n", "`trials` must be a positive integer"),
    ("paper: P\ntables:\n- {table: T, setting: s, task: t, mode: frozen, arch: R-50, columns: [bbox.AP, bbox.AP50],"
     " spread: {std: [0.2], source: x}, rows: [{backbone: a, values: [1.0, 2.0]}]}\n", "`std` must list 2 numbers"),
    ("paper: P\ntables:\n- {table: T, setting: s, task: t, mode: frozen, arch: R-50, columns: [bbox.AP],"
     " spread: {std: [0.2], rows: [b], source: x}, rows: [{backbone: a, values: [1.0]}]}\n", "`rows` must list backbones"),
    ("paper: P\ntables:\n- {table: T, setting: s, task: t, mode: frozen, arch: R-50, columns: [bbox.AP],"
     " spread: {std: [0.2]}, rows: [{backbone: a, values: [1.0]}]}\n", "`source` must be a non-empty string"),
    ("paper: P\ntables:\n- {table: T, setting: s, task: t, mode: frozen, arch: R-50, columns: [bbox.AP],"
     " spread: {std: [-1], source: x}, rows: [{backbone: a, values: [1.0]}]}\n", "is not a number >= 0"),
])
def test_bad_reference_files_fail_with_one_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ReferenceError) as err:
        load_reference_file(str(path))
    assert message in str(err.value) and str(err.value).startswith("bad.yaml: ") and "\n" not in str(err.value)


def test_duplicate_numbers_across_files_are_an_error(tmp_path):
    block = ("paper: {p}\ntables:\n- {{table: T, setting: s, task: t, mode: frozen, arch: R-18, columns: [bbox.AP],"
             " rows: [{{backbone: a, values: [1.0]}}]}}\n")
    (tmp_path / "a.yaml").write_text(block.format(p="A"))
    (tmp_path / "b.yaml").write_text(block.format(p="B"))
    with pytest.raises(ReferenceError, match="is also in a.yaml"):
        load_references(str(tmp_path))


# ----------------------------------------------------------------------------- against the paper text

def _require(path):
    if not os.path.isfile(path):
        pytest.skip(f"paper text not available: {path}")
    with open(path, encoding="utf-8") as f:
        return f.read()


def _table_segment(text, number):
    """The text from the caption "Table N:" to the next table caption (the extraction keeps each table's
    columns after its caption, one value per line)."""
    start = re.search(rf"^\s*Table {number}:", text, re.M)
    assert start, f"Table {number} not found"
    nxt = re.search(rf"^\s*Table {number + 1}:", text[start.end():], re.M)
    return text[start.start(): start.end() + nxt.start() if nxt else len(text)]


def _column_runs(segment):
    """Runs of consecutive lines that start with a number like 40.6 (optionally followed by its gap)."""
    runs, current = [], []
    for line in segment.splitlines():
        m = re.match(r"^\s*(\d+\.\d)\s*(\(.*)?$", line)
        if m:
            current.append(float(m.group(1)))
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def _contains(run, column):
    k = len(column)
    return any(run[i:i + k] == column for i in range(len(run) - k + 1))


def test_infomin_columns_match_the_paper_text(refs):
    text = _require(INFOMIN_TXT)
    blocks = {}
    for r in find_references(refs, paper="InfoMin"):
        blocks.setdefault(r.table, {}).setdefault((r.family, r.metric), []).append((r.order, r.value))
    assert len(blocks) == 17
    checked = 0
    for table, columns in blocks.items():
        number = int(re.match(r"Table (\d+)", table).group(1))
        runs = _column_runs(_table_segment(text, number))
        for (family, metric), cells in columns.items():
            column = [v for _, v in sorted(cells)]
            # each column of the paper, in its row order, is a run of lines in the extracted text
            assert any(_contains(run, column) for run in runs), (table, family, metric, column)
            checked += 1
    assert checked == 16 * 6 + 3


def test_wu_table2_matches_the_paper_text(refs):
    text = _require(WU_TXT)
    # tab-separated rows: "IR<TAB>6.1<TAB>...<TAB>IR<TAB>8.6..." for (e, f) and for (g, h, i)
    parsed = {}
    groups_of = {6: ["e", "f"], 3: ["g", "h", "i"]}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) < 8 or fields[0] not in {"IR", "BALL", "ANN", "LA", "BALL+", "ANN+"}:
            continue
        groups, current = [], None
        for f in fields:
            try:
                current[1].append(float(f))
            except (ValueError, TypeError):
                current = (f, [])
                groups.append(current)
        width = len(groups[0][1])
        if width not in groups_of:  # (a)-(d): classification, Top1/Top5
            continue
        for letter, (name, values) in zip(groups_of[width], groups):
            if letter in "efghi":
                parsed[(letter, name.lower())] = values
    assert len(parsed) == 5 * 6
    columns = {"e": ["bbox.AP", "bbox.AP50", "bbox.AP75", "segm.AP", "segm.AP50", "segm.AP75"],
               "f": ["bbox.AP", "bbox.AP50", "bbox.AP75", "segm.AP", "segm.AP50", "segm.AP75"],
               "g": ["keypoints.AP", "keypoints.AP50", "keypoints.AP75"],
               "h": ["bbox.AP", "bbox.AP50", "bbox.AP75"], "i": ["segm.AP", "segm.AP50", "segm.AP75"]}
    wu = [r for r in find_references(refs, paper="Wu2020") if r.family != "linear"]
    assert len(wu) == sum(len(c) for c in columns.values()) * 6
    for r in wu:
        letter = re.match(r"Table 2\(([e-i])\)", r.table).group(1)
        expected = parsed[(letter, r.backbone)][columns[letter].index(f"{r.family}.{r.metric}")]
        assert r.value == expected, r


def test_wu_table2_classification_matches_the_paper_text(refs):
    """Table 2(a)-(d): four (model, Top1, Top5) groups per line, (a, b) CIFAR10, (c, d) ImageNet; the CMC
    groups (b, d) have a row of dashes where the IR family has LA."""
    text = _require(WU_TXT)
    lines = text.splitlines()
    header = [i for i, line in enumerate(lines) if line.split("\t")[:3] == ["Model", "Top1", "Top5"]]
    assert len(header) == 1
    parsed = {}
    for line in lines[header[0] + 1: header[0] + 7]:  # the six rows under the header
        fields = line.split("\t")
        assert len(fields) == 12 and fields[0] in {"IR", "BALL", "ANN", "LA", "BALL+", "ANN+"}, line
        for letter, k in zip("abcd", range(0, 12, 3)):
            name, top1, top5 = fields[k:k + 3]
            try:
                parsed[(letter, name.lower())] = [float(top1), float(top5)]
            except ValueError:  # the CMC groups' dash row
                assert letter in "bd" and fields[0] == "LA", line
    assert len(parsed) == 6 + 5 + 6 + 5
    linear = find_references(refs, paper="Wu2020", family="linear")
    assert len(linear) == len(parsed) * 2
    for r in linear:
        letter = re.match(r"Table 2\(([a-d])\)", r.table).group(1)
        assert r.task == ("linear_cifar10" if letter in "ab" else "linear_imagenet"), r
        assert r.value == parsed[(letter, r.backbone)][("top1", "top5").index(r.metric)], r
