"""Transfer curves in the report: runs of kept pretraining checkpoints (backbones <method>@ep<epoch>) become one
line per method and mode against the epoch, next to the MI estimates; the PNGs and the HTML section."""
import json
import math
import os
import statistics

import pytest

from pretrain.common.runs import results_record, write_results
from transfer.report import make_report

VOC = "voc_faster_rcnn_R_50_C4_24k"


def ap(method, mode, epoch, seed):
    """A made-up AP: rising with the epoch, fine-tuned above frozen, a little seed noise."""
    return {"moco": 40.0, "ir": 30.0}[method] + 5.0 * epoch + (8.0 if mode == "finetune" else 0.0) + 0.5 * seed


def write_mi(root, name, backbone, mi_nats):
    path = os.path.join(root, f"mi_{name}", backbone, "mi.json")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump({"backbone": backbone, "pairing": "simclr", "mi_nats": mi_nats, "mi_nats_std": 0.1,
                   "ceiling_nats": math.log(64), "k_est": 64}, f)


@pytest.fixture
def curve_root(tmp_path):
    root = str(tmp_path / "sweep")
    for method in ("moco", "ir"):
        for epoch in (10, 20, 30):
            label = f"{method}@ep{epoch}"
            for mode in ("frozen", "finetune"):
                for seed in (0, 1):
                    out = os.path.join(root, VOC, label, mode, f"seed{seed}")
                    os.makedirs(out)
                    metrics = {"bbox": {"AP": ap(method, mode, epoch, seed), "AP50": 60.0}}
                    write_results(out, results_record(backbone=label, task=VOC, mode=mode, seed=seed, weights="w.pkl",
                                                      iterations=2, metrics=metrics))
            out = os.path.join(root, "knn_in", label, "frozen", "seed0")
            os.makedirs(out)
            top1 = epoch + (5 if method == "ir" else 0)
            write_results(out, results_record(backbone=label, task="knn_in", mode="frozen", seed=0, weights="c.pth",
                                              iterations=0, metrics={"knn": {"top1": top1}}))
            write_mi(root, "views", label, 0.1 * epoch)
    # the final backbone and a baseline are runs like any other, not points of a curve
    for backbone in ("moco", "random"):
        out = os.path.join(root, VOC, backbone, "frozen", "seed0")
        os.makedirs(out)
        write_results(out, results_record(backbone=backbone, task=VOC, mode="frozen", seed=0, weights="",
                                          iterations=2, metrics={"bbox": {"AP": 1.0}}))
    return root


def test_curve_data_has_every_epoch_method_and_mode(curve_root):
    curves = make_report(curve_root).report.curves
    by_task = {c.task: c for c in curves.curves}
    assert set(by_task) == {VOC, "knn_in"}
    voc = by_task[VOC]
    assert (voc.family, voc.metric, voc.modes, list(voc.lines), voc.epochs()) == \
        ("bbox", "AP", ["finetune", "frozen"], ["ir", "moco"], [10, 20, 30])
    for method in ("moco", "ir"):
        for mode in ("frozen", "finetune"):
            points = voc.lines[method][mode]
            assert [p[0] for p in points] == [10, 20, 30]
            for epoch, mean, std, n in points:
                values = [ap(method, mode, epoch, s) for s in (0, 1)]
                assert (mean, std, n) == (pytest.approx(statistics.mean(values)),
                                          pytest.approx(statistics.stdev(values)), 2)
    knn = by_task["knn_in"]
    assert (knn.family, knn.metric, knn.modes) == ("knn", "top1", ["frozen"])
    assert knn.lines["ir"]["frozen"] == [(10, 15.0, None, 1), (20, 25.0, None, 1), (30, 35.0, None, 1)]
    (mi,) = curves.mi
    assert mi.name == "views" and mi.epochs() == [10, 20, 30]
    assert [p[1] for p in mi.lines["moco"]] == pytest.approx([0.1 * e / math.log(2) for e in (10, 20, 30)])


def test_curve_plots_and_html_section(curve_root, tmp_path):
    plots, html = str(tmp_path / "plots"), str(tmp_path / "report.html")
    output = make_report(curve_root, plots_dir=plots, html_path=html)
    names = sorted(os.path.basename(p) for p in output.plot_files)
    assert "curves_knn_in.png" in names and f"curves_{VOC}.png" in names
    for name in ("curves_knn_in.png", f"curves_{VOC}.png"):
        with open(os.path.join(plots, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(html) as f:
        page = f.read()
    assert "Transfer curves during pretraining" in page and 'alt="curves_knn_in"' in page
    assert "<th>moco fine-tuned</th>" in page and "<th>ir frozen</th>" in page and "MI views (bits)" in page


def test_no_curves_without_kept_checkpoints(tmp_path):
    root = str(tmp_path / "plain")
    out = os.path.join(root, VOC, "moco", "frozen", "seed0")
    os.makedirs(out)
    write_results(out, results_record(backbone="moco", task=VOC, mode="frozen", seed=0, weights="",
                                      iterations=2, metrics={"bbox": {"AP": 1.0}}))
    output = make_report(root, plots_dir=str(tmp_path / "plots"), html_path=str(tmp_path / "r.html"))
    assert output.report.curves is None
    assert not any(os.path.basename(p).startswith("curves_") for p in output.plot_files)
    with open(tmp_path / "r.html") as f:
        assert "Transfer curves" not in f.read()
