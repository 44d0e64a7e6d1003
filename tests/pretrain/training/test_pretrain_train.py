"""tools/pretrain_backbone.py (pretrain.training.train) end to end on CPU: exact resume, metrics, checkpoint
format and conversion, configs, user errors. Tiny: ResNet-18 at 32 px, batch 8, a few iterations, InfoMin views with the JigSaw branch."""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from pretrain.training import train
from pretrain.config import load_config
from transfer.data.synthetic import write_synthetic
from pretrain.common.paths import REPO_ROOT

REPO = REPO_ROOT
TINY = ["MODEL.ARCH", "resnet18", "INPUT.SIZE", "32", "SOLVER.BATCH_SIZE", "8", "MOCO.K", "16", "MODEL.DIM", "16",
        "SOLVER.MAX_ITER", "5", "LOG_PERIOD", "1", "KNN.PERIOD", "2", "KNN.BATCH_SIZE", "20", "DATA.NUM_WORKERS", "0",
        "SOLVER.CHECKPOINT_PERIOD", "2", "SEED", "7",
        # JigSaw tiles of 17 px (3 x 18 px cells): the smallest input for which the default CPU precision
        # (bf16 on this kind of CPU) is exact, see pretrain.training.solver.CPU_BF16_MIN_INPUT
        "JIGSAW.IMAGE_SIZE", "54", "JIGSAW.TILE_SIZE", "17"]
INFOMIN = os.path.join(REPO, "configs", "pretrain", "infomin_R_50.yaml")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """20 train images (10 classes), 2 of them unreadable, both drawn in the first epoch; 20 val images."""
    from torch.utils.data import DistributedSampler

    from pretrain.data.images import scan_folder

    root = tmp_path_factory.mktemp("pretrain_train")
    write_synthetic(root, kinds=("imagenet",), num_images=2, seed=0)
    imagenet = os.path.join(root, "imagenet")
    _, samples = scan_folder(os.path.join(imagenet, "train"))
    order = list(DistributedSampler(range(len(samples)), num_replicas=1, rank=0, shuffle=True, seed=7,
                                    drop_last=True))
    bad = [samples[order[1]][0], samples[order[10]][0]]  # in the first and second batch of epoch 0
    data = open(bad[0], "rb").read()
    open(bad[0], "wb").write(data[: len(data) // 4])  # truncated JPEG
    open(bad[1], "wb").write(b"\x00" * 100)           # not an image
    return imagenet, bad


def run_main(argv):
    code = train.main(argv)
    assert code == 0
    return code


def metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory):
    imagenet, _ = data_root
    base = tmp_path_factory.mktemp("runs")
    full, split = str(base / "full"), str(base / "split")
    common = ["--config-file", INFOMIN, "DATA.ROOT", imagenet, *TINY]
    run_main([*common, "OUTPUT_DIR", full, "DATA.NUM_WORKERS", "2"])
    # stopped after 3 iterations (mid-epoch: 2 iterations per epoch), resumed with another worker count
    run_main([*common, "OUTPUT_DIR", split, "DATA.NUM_WORKERS", "0", "SOLVER.STOP_ITER", "3"])
    stopped = metrics(split)
    run_main([*common, "OUTPUT_DIR", split, "DATA.NUM_WORKERS", "1", "--resume"])
    return full, split, stopped


def test_resume_reproduces_the_uninterrupted_run(runs):
    full, split, stopped = runs
    assert [m["iter"] for m in stopped] == [1, 2, 3]
    a, b = metrics(full), metrics(split)
    losses_a = [(m["iter"], m["loss"]) for m in a if "loss" in m]
    losses_b = [(m["iter"], m["loss"]) for m in b if "loss" in m]
    assert [i for i, _ in losses_a] == [1, 2, 3, 4, 5]
    assert losses_a == losses_b  # bit for bit
    for key in ("loss_inst", "loss_jig", "acc_inst", "mi_bound", "lr", "bad_images"):
        assert [m.get(key) for m in a if "loss" in m] == [m.get(key) for m in b if "loss" in m], key
    knn_a = [(m["iter"], m["knn_top1"]) for m in a if "knn_top1" in m]
    assert knn_a == [(m["iter"], m["knn_top1"]) for m in b if "knn_top1" in m] and [i for i, _ in knn_a] == [4, 5]
    ca = torch.load(os.path.join(full, "checkpoint_final.pth"), weights_only=True)
    cb = torch.load(os.path.join(split, "checkpoint_final.pth"), weights_only=True)
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    for k in ca["state_dict"]:
        assert torch.equal(ca["state_dict"][k], cb["state_dict"][k]), k
    assert torch.equal(ca["rng"][0]["torch"], cb["rng"][0]["torch"])


def test_metrics_lines(runs, data_root):
    full, _, _ = runs
    records = [m for m in metrics(full) if "loss" in m]
    base_lr = 0.03 * 8 / 256
    for m in records:
        for key in ("iter", "epoch", "loss", "lr", "mi_bound", "mi_ceiling", "images_per_sec", "data_time",
                    "loss_inst", "loss_jig", "bad_images"):
            assert key in m, key
        assert m["mi_ceiling"] == pytest.approx(math.log(16 + 1))
        assert m["mi_bound"] == pytest.approx(m["mi_ceiling"] - m["loss_inst"])
        assert m["loss"] == pytest.approx(0.5 * m["loss_inst"] + 0.5 * m["loss_jig"], rel=1e-5)
        assert m["epoch"] == pytest.approx(m["iter"] / 2)
        assert m["images_per_sec"] > 0 and m["data_time"] >= 0
        it = m["iter"] - 1  # lr of the step that produced this line; cosine to 0.001 x lr over 5 iterations
        want = base_lr * 0.001 + base_lr * 0.999 * 0.5 * (1 + math.cos(math.pi * it / 5))
        assert m["lr"] == pytest.approx(want, rel=1e-9)
    counts = [m["bad_images"] for m in records]
    assert counts[0] >= 1 and counts == sorted(counts) and counts[-1] == 2  # each unreadable file counted once
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(full))
    log = open(os.path.join(full, "log.txt")).read()
    for path in data_root[1]:
        assert f"skipped unreadable image {path}" in log


def test_checkpoint_format_and_conversion(runs, tmp_path):
    from transfer.conversion.convert import convert

    full, _, _ = runs
    path = os.path.join(full, "checkpoint_final.pth")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    sd = ckpt["state_dict"]
    assert ckpt["arch"] == "resnet18" and ckpt["method"] == "moco" and ckpt["iter"] == 5 and ckpt["epoch"] == 2
    assert yaml.safe_load(ckpt["config"])["MODEL"]["ARCH"] == "resnet18"
    assert sd["queue"].shape == (16, 16) and sd["queue_ptr"].tolist() == [(5 * 8) % 16]
    assert "encoder_q.conv1.weight" in sd and "encoder_k.layer4.1.bn2.running_var" in sd
    assert "encoder_q.fc.0.weight" in sd and "jigsaw_head.fc2.weight" in sd
    for key in ("optimizer", "scheduler", "sampler", "rng"):
        assert key in ckpt
    assert ckpt["sampler"] == {"epoch": 2, "position": 8, "seed": 7}
    assert os.path.isfile(os.path.join(full, "checkpoint_last.pth"))
    assert not [n for n in os.listdir(full) if n.endswith(".tmp")]

    out = tmp_path / "r18.pkl"
    result = convert(path, str(out))  # no options: the layout is detected
    assert result.backbone.layout == "pretrain"
    assert result.backbone.arch.depth == 18
    assert result.verification.max_rel_error < 1e-4
    assert torch.equal(result.backbone.state["conv1.weight"], sd["encoder_q.conv1.weight"].float())
    assert result.backbone.dropped.get("head", 0) >= 4  # the MLP head (fc.0, fc.2) is not backbone


def test_resume_when_done_and_without_checkpoint(runs, data_root, tmp_path):
    full, _, _ = runs
    imagenet, _ = data_root
    before = metrics(full)
    run_main(["--config-file", INFOMIN, "DATA.ROOT", imagenet, *TINY, "OUTPUT_DIR", full, "--resume"])
    assert metrics(full) == before  # nothing left to do, nothing rewritten


def test_configs_cite_their_recipes():
    expected = {"moco_v1_R_50": dict(HEAD="linear", T=0.07, K=65536, sched="step", views="moco_v1", jig=False),
                "moco_v2_R_50": dict(HEAD="mlp", T=0.2, K=65536, sched="cosine", views="moco_v2", jig=False),
                "infomin_R_50": dict(HEAD="mlp", T=0.15, K=65536, sched="cosine", views="infomin", jig=True),
                "infomin_R_50_800ep": dict(HEAD="mlp", T=0.15, K=65536, sched="cosine", views="infomin", jig=True)}
    for name, want in expected.items():
        path = os.path.join(REPO, "configs", "pretrain", f"{name}.yaml")
        header = open(path).read().split("\n", 1)[0]
        assert header.startswith("#")
        text = open(path).read()
        assert ("He et al." in text or "Chen, Fan" in text or "Tian" in text) and ("Table" in text or "Sec." in text)
        cfg = load_config(path)
        assert (cfg.MODEL.HEAD, cfg.MOCO.T, cfg.MOCO.K, cfg.SOLVER.LR_SCHEDULER, cfg.INPUT.VIEWS,
                cfg.JIGSAW.ENABLED) == (want["HEAD"], want["T"], want["K"], want["sched"], want["views"], want["jig"])
        assert cfg.SOLVER.BASE_LR == 0.03 and cfg.SOLVER.BATCH_SIZE == 256 and cfg.MOCO.M == 0.999
        assert tuple(cfg.INPUT.CROP_SCALE) == (0.2, 1.0)
    assert load_config(os.path.join(REPO, "configs/pretrain/infomin_R_50_800ep.yaml")).SOLVER.EPOCHS == 800
    assert load_config(os.path.join(REPO, "configs/pretrain/moco_v1_R_50.yaml")).SOLVER.STEPS == (120, 160)


@pytest.mark.parametrize("extra, message", [
    ([], "DATA.ROOT is not set"),
    (["DATA.ROOT", "/nonexistent/imagenet"], "no such folder"),
    (["DATA.ROOT", "{empty}"], "no images"),
    (["DATA.ROOT", "{root}", "MODEL.ARCH", "resnet19"], "unknown MODEL.ARCH 'resnet19'"),
    (["DATA.ROOT", "{root}", "MODEL.METHOD", "byol"], "unknown MODEL.METHOD 'byol'"),
    (["DATA.ROOT", "{root}", "INPUT.VIEWS", "simclr"], "unknown INPUT.VIEWS 'simclr'"),
    (["DATA.ROOT", "{root}", "MOCO.KK", "3"], "unknown config key MOCO.KK"),
    (["DATA.ROOT", "{root}", "MOCO.K", "many"], "bad value for MOCO.K"),
    (["DATA.ROOT", "{root}", "MOCO.K", "4"], "MOCO.K 4 must be at least SOLVER.BATCH_SIZE"),
    (["DATA.ROOT", "{root}", "SOLVER.BATCH_SIZE", "7", "--num-gpus", "2"], "multiple of the number of processes"),
    # more than the 20 training images: refused before OUTPUT_DIR (and its log.txt) is created
    (["DATA.ROOT", "{root}", "SOLVER.BATCH_SIZE", "64"], "20 images, fewer than one batch of SOLVER.BATCH_SIZE 64"),
    (["DATA.ROOT", "{root}", "SOLVER.BATCH_SIZE", "22", "--num-gpus", "2"], "fewer than one batch"),
])
def test_user_errors_are_one_line(extra, message, data_root, tmp_path, capsys):
    imagenet, _ = data_root
    os.makedirs(tmp_path / "empty" / "train" / "n01")
    extra = [e.format(root=imagenet, empty=tmp_path / "empty") for e in extra]
    out_dir = tmp_path / "out"
    code = train.main(["--config-file", INFOMIN, "OUTPUT_DIR", str(out_dir), "SOLVER.BATCH_SIZE", "8", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out_dir.exists()  # nothing written before the run could start


def test_cli_exit_status(data_root, tmp_path):
    imagenet, _ = data_root
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "pretrain_backbone.py"), "--config-file", INFOMIN,
                           "DATA.ROOT", imagenet, "MODEL.ARCH", "vgg16", "OUTPUT_DIR", str(tmp_path / "o")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown MODEL.ARCH 'vgg16'" in proc.stderr
    assert proc.stderr.startswith("pretrain_backbone: error: ")
    assert "Traceback" not in proc.stderr


def test_two_processes_gloo(data_root, tmp_path):
    """--num-gpus 2 on CPU: two gloo workers, DDP, shuffle BN; the checkpoint holds both RNG states."""
    imagenet, _ = data_root
    out = str(tmp_path / "ddp")
    run_main(["--config-file", INFOMIN, "DATA.ROOT", imagenet, *TINY, "SOLVER.MAX_ITER", "2", "KNN.PERIOD", "0",
              "OUTPUT_DIR", out, "--num-gpus", "2"])
    ckpt = torch.load(os.path.join(out, "checkpoint_final.pth"), weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["iter"] == 2
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    assert int(ckpt["state_dict"]["queue_ptr"]) == 16 % 16
    records = [m for m in metrics(out) if "loss" in m]
    assert [m["iter"] for m in records] == [1, 2] and all(math.isfinite(m["loss"]) for m in records)
    # 4 images per process per step: an epoch is 20 images // 8 = 2 iterations, as with one process
    assert records[0]["epoch"] == pytest.approx(1 / 2)
    shutil.rmtree(out)
