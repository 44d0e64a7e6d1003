"""pretrain.evaluation.linear (tools/linear_eval.py): logistic regression on frozen features, results.json in the
transfer schema."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torchvision
from PIL import Image

from pretrain.evaluation.features import ViewedImages, extract_features, topk_accuracy, view_loader
from pretrain.evaluation.frozen import load_frozen_encoder
from pretrain.evaluation.linear.command import main, parse_args
from pretrain.evaluation.linear.config import build_views_of, load_config
from pretrain.evaluation.linear.loop import run
from pretrain.training.solver import LRSchedule
from pretrain.data.labeled import LabeledImages
from pretrain.common.safe_load import dump_pickle
from pretrain.checkpoints.backbone import extract_backbone
from transfer.conversion.convert import detectron2_payload
from transfer.report import make_tables, render
from transfer.report.runs import parse_record
from pretrain.common.paths import REPO_ROOT

REPO = REPO_ROOT
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (20, 40, 230), "yellow": (230, 220, 30),
          "gray": (128, 128, 128), "black": (5, 5, 5)}
FAST = ["INPUT.SIZE", "32", "DATA.NUM_WORKERS", "0", "LINEAR.FEATURE_BATCH_SIZE", "64"]


def _solid(path, rgb, seed):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(-12, 13, (20, 20, 3), generator=g)
    pixels = (torch.tensor(rgb).view(1, 1, 3) + noise).clamp(0, 255).to(torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Solid-colour ImageFolder (class = colour), a labels.csv folder of noise with random labels, and a
    random-weight resnet18 converted to Detectron2's .pkl."""
    root = tmp_path_factory.mktemp("lin")
    for split, n in (("train", 5), ("val", 2)):
        for c, (name, rgb) in enumerate(COLORS.items()):
            for i in range(n):
                _solid(root / "colors" / split / name / f"{i}.png", rgb, seed=100 * c + 10 * i + (split == "val"))
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 48), ("val", 40)):
        folder = root / "noise" / split
        folder.mkdir(parents=True)
        rows = ["file,shape,digit"]
        for i in range(n):
            pixels = torch.randint(0, 256, (12, 12, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / f"{i}.png")
            rows.append(f"{i}.png,{'round' if i % 2 else 'square'},{int(torch.randint(0, 8, (1,), generator=g))}")
        (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    backbone = extract_backbone(dict(net.state_dict()), source="test")
    weights = root / "rand_r18.pkl"
    dump_pickle(detectron2_payload(backbone, {"format": "torchvision"}), str(weights))
    return root, str(weights)


def _cfg(weights, data_root, *opts):
    return load_config(None, ["WEIGHTS", weights, "DATA.ROOT", str(data_root), *FAST, *opts])


def test_separable_colours_reach_100_percent(data, tmp_path):
    root, weights = data
    cfg = _cfg(weights, root / "colors", "DATA.NAME", "colors", "AUGMENT", "none", "SOLVER.EPOCHS", "12",
               "SOLVER.BATCH_SIZE", "8", "SEED", "3")
    record = run(cfg, str(tmp_path / "out"))
    assert record["metrics"]["linear"]["top1"] == 100.0 and record["metrics"]["linear"]["top5"] == 100.0
    # the transfer schema (docs/artifacts.md), as the report reads it
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert on_disk == record
    assert {"backbone", "task", "mode", "seed", "weights", "iterations", "metrics", "commit"} <= set(record)
    assert record["task"] == "linear_colors" and record["mode"] == "frozen" and record["seed"] == 3
    assert record["backbone"] == "rand_r18" and record["weights"] == weights and record["arch"] == "R-18"
    assert record["iterations"] == 12 * 4  # 30 images in batches of 8
    fields = parse_record(on_disk)
    assert fields["metrics"] == {"linear": {"top1": 100.0, "top5": 100.0}}
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, 13))
    assert {"lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5"} <= set(lines[0])
    assert (tmp_path / "out" / "config.yaml").is_file() and (tmp_path / "out" / "linear_final.pth").is_file()


def test_topk_accuracy_against_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(50, 9, generator=g), torch.randint(0, 9, (50,), generator=g)
    ranks = [sorted(range(9), key=lambda c: -float(row[c])).index(int(t)) for row, t in zip(logits, targets)]
    got = topk_accuracy(logits, targets)
    assert got["top1"] == pytest.approx(100 * sum(r < 1 for r in ranks) / 50)
    assert got["top5"] == pytest.approx(100 * sum(r < 5 for r in ranks) / 50)
    assert topk_accuracy(logits[:, :3], targets.clamp(max=2))["top5"] == 100.0  # fewer than 5 classes


def test_results_match_the_saved_layer_on_a_hard_task(data, tmp_path):
    """Random labels (8 digits) on noise, from labels.csv: top-1/top-5 in results.json are those of the
    saved layer on features computed here independently."""
    root, weights = data
    cfg = _cfg(weights, root / "noise", "DATA.NAME", "noise", "DATA.ATTRIBUTE", "digit", "SOLVER.EPOCHS", "3",
               "LINEAR.STANDARDIZE", "True")
    record = run(cfg, str(tmp_path / "out"))
    top1, top5 = record["metrics"]["linear"]["top1"], record["metrics"]["linear"]["top5"]
    assert top5 < 100.0 and top1 < top5
    final = torch.load(tmp_path / "out" / "linear_final.pth", weights_only=True)
    val = LabeledImages(root / "noise" / "val")
    digit = val.attributes.index("digit")
    assert final["classes"] == [str(d) for d in range(8)]
    targets = torch.tensor([final["classes"].index(val.classes["digit"][k]) for k in val.labels[:, digit].tolist()])
    encoder = load_frozen_encoder(weights)
    views = build_views_of(cfg, "eval")
    feats = torch.stack([encoder(views(val.load(i))["view1"][None])[0] for i in range(len(val))])
    logits = ((feats - final["mean"]) / final["std"]) @ final["weight"].t() + final["bias"]
    ranks = (logits > logits.gather(1, targets[:, None])).sum(1)  # classes scored above the target
    assert top1 == pytest.approx(100 * (ranks < 1).float().mean().item(), abs=1e-4)
    assert top5 == pytest.approx(100 * (ranks < 5).float().mean().item(), abs=1e-4)


def test_augmented_path_and_resume_after_a_stop(data, tmp_path):
    root, weights = data
    opts = ["DATA.NAME", "colors", "AUGMENT", "moco_v1", "SOLVER.EPOCHS", "3", "SOLVER.BATCH_SIZE", "16",
            "LINEAR.FEATURE_BATCH_SIZE", "8"]
    whole = run(_cfg(weights, root / "colors", *opts), str(tmp_path / "whole"))
    assert run(_cfg(weights, root / "colors", *opts, "SOLVER.STOP_EPOCH", "2"), str(tmp_path / "split")) is None
    assert not (tmp_path / "split" / "results.json").exists()
    assert len((tmp_path / "split" / "metrics.jsonl").read_text().splitlines()) == 2
    resumed = run(_cfg(weights, root / "colors", *opts), str(tmp_path / "split"))
    assert resumed["metrics"] == whole["metrics"] and resumed["iterations"] == whole["iterations"] == 3 * 2
    a = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(a, b):  # the same batches, the same crops: the same losses
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5) and x["val_top1"] == y["val_top1"]
    # results exist: not repeated
    assert run(_cfg(weights, root / "colors", *opts), str(tmp_path / "split")) is None


def test_augmented_views_depend_on_seed_epoch_and_index(data):
    root, weights = data
    cfg = _cfg(weights, root / "colors", "AUGMENT", "moco_v1")
    images = LabeledImages(root / "colors" / "train")
    split = ViewedImages(images, build_views_of(cfg, "moco_v1"), seed=0, targets=images.labels[:, 0])
    assert torch.equal(split[(3, 1)][0], split[(3, 1)][0])
    assert not torch.equal(split[(3, 1)][0], split[(3, 2)][0])
    encoder = load_frozen_encoder(weights)
    feats, targets = extract_features(encoder, view_loader(split, batch_size=7, order=[0, 5, 9]), encoder.device)
    assert feats.shape == (3, 512) and targets.tolist() == images.labels[[0, 5, 9], 0].tolist()


def test_options_after_key_values():
    args = parse_args(["--weights", "w.pkl", "DATA.ROOT", "d", "--force", "--out=o", "SEED", "1", "--format", "moco"])
    assert (args.weights, args.force, args.out, args.format) == ("w.pkl", True, "o", "moco")
    assert args.opts == ["DATA.ROOT", "d", "SEED", "1"] and not args.trust_pickle


def test_plateau_schedule():
    """The pretraining schedule stepped per epoch: 0-based epoch e reports as epoch e + 1, a drop applies
    from the next epoch on."""
    s = LRSchedule.per_epoch("plateau", 0.01, 11, gamma=0.1, patience=2, max_drops=2)
    drops = [s.report_metric(e + 1, v, iteration=e + 1) for e, v in enumerate([1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3])]
    # best at epoch 1; epochs 2, 3 without a better value -> drop after epoch 3; two more -> after 5; then no more
    assert [e for e, d in enumerate(drops) if d] == [3, 5]
    assert [round(s(e), 6) for e in (3, 4, 6)] == [0.01, 0.001, 0.0001]
    step = LRSchedule.per_epoch("step", 1.0, 5, gamma=0.5, steps=(2, 4))
    assert [step(e) for e in range(5)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    constant = LRSchedule.per_epoch("constant", 0.3, 5)
    assert [constant(e) for e in range(5)] == [0.3] * 5


@pytest.mark.parametrize("case, expect", [
    ("no_weights", "no such file"),
    ("no_root", "no such folder"),
    ("attribute", "no label column 'color'"),
    ("two_columns", "2 label columns (shape, digit); choose one with DATA.ATTRIBUTE"),
    ("val_class", "validation class(es) 'purple' do not occur in the training split"),
    ("augment", "unknown AUGMENT 'fancy'"),
    ("key", "unknown config key SOLVER.LR"),
    ("not_weights", "unknown checkpoint layout"),
])
def test_errors_are_one_line_and_write_nothing(data, tmp_path, capsys, case, expect):
    root, weights = data
    out = tmp_path / "out"
    args = ["--weights", weights, "--out", str(out), "DATA.ROOT", str(root / "colors"), *FAST]
    if case == "no_weights":
        args[1] = str(tmp_path / "missing.pkl")
    elif case == "no_root":
        args += ["DATA.ROOT", str(tmp_path / "nowhere")]
    elif case == "attribute":
        args += ["DATA.ROOT", str(root / "noise"), "DATA.ATTRIBUTE", "color"]
    elif case == "two_columns":
        args += ["DATA.ROOT", str(root / "noise")]
    elif case == "val_class":
        bad = tmp_path / "bad"
        for split, name in (("train", "red"), ("train", "blue"), ("val", "red"), ("val", "purple")):
            _solid(bad / split / name / "0.png", (1, 2, 3), 0)
        args += ["DATA.ROOT", str(bad)]
    elif case == "augment":
        args += ["AUGMENT", "fancy"]
    elif case == "key":
        args += ["SOLVER.LR", "0.1"]
    else:
        torch.save({"foo": torch.zeros(2)}, tmp_path / "w.pth")
        args[1] = str(tmp_path / "w.pth")
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("linear_eval: error: ") and expect in err, err
    assert not out.exists()


def test_cli_end_to_end_and_the_report(data, tmp_path, capsys):
    root, weights = data
    results = tmp_path / "results"
    out = results / "linear_cdp" / "rand_r18" / "frozen" / "seed0"
    cmd = [sys.executable, os.path.join(REPO, "tools", "linear_eval.py"),
           "--config-file", os.path.join(REPO, "configs/linear/cdp.yaml"), "--weights", weights, "--out", str(out),
           "DATA.ROOT", str(root / "noise"), "SOLVER.EPOCHS", "2", *FAST]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["task"] == "linear_cdp" and set(summary) == {"task", "backbone", "top1", "top5"}
    assert main(cmd[2:]) == 0 and "exists; nothing to do" in capsys.readouterr().out  # not run twice
    # a published Wu et al. number sits next to ours in the same table format as detection
    record = json.loads((out / "results.json").read_text())
    record.update(task="linear_cifar10", backbone="ir")
    (results / "linear_cifar10" / "ir" / "frozen" / "seed0").mkdir(parents=True)
    (results / "linear_cifar10" / "ir" / "frozen" / "seed0" / "results.json").write_text(json.dumps(record))
    _, tables = make_tables(str(results), references=True)
    by_task = {t.task: t for t in tables}
    assert by_task["linear_cdp"].family == "linear" and by_task["linear_cdp"].metrics == ("top1", "top5")
    cifar = by_task["linear_cifar10"]
    published = {r.backbone: r for r in cifar.published_rows()}
    assert published["ir"].cells[("frozen", "top1")].mean == 81.2 and "cmc-ann+" in published
    text = render(tables, "markdown")
    assert "linear_cifar10" in text and "frozen top1" in text and "Wu2020 Table 2(a)" in text
