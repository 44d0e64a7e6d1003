"""tools/submit.py sweep FILE --estimate (transfer.launch.estimate): GPU-hours and disk from the cost table,
checked against arithmetic done by hand on a tiny sweep and a cost table written here."""
import os

import pytest

from pretrain.common.paths import CONFIGS_DIR

SWEEP = """\
name: tiny_estimate
backbones: {random: ""}
tasks: [coco_mask_rcnn_R_50_FPN_1x, coco_keypoint_rcnn_R_50_FPN_1x]
modes: [finetune, frozen]
seeds: [0, 1]
overrides: [MODEL.RESNETS.DEPTH, "18", MODEL.RESNETS.RES2_OUT_CHANNELS, "64", SOLVER.MAX_ITER, "1000",
            SOLVER.CHECKPOINT_PERIOD, "300", TEST.EVAL_PERIOD, "400"]
resources: {gpus_per_node: 8}
"""

TABLE = """\
gpu: TestGPU
source: written by the test
reference: {gpus: 8, ims_per_batch: 16}
models:
  coco_mask_rcnn_R_50_FPN: {train_s_per_iter: 0.5, inference_s_per_image: 0.1, backbone: R-50, kind: measured,
                            source: the test}
modes:
  finetune: {factor: {FPN: 2.0, C4: 3.0}, kind: estimate, source: the test}
  frozen: {factor: {FPN: 0.5, C4: 0.25}, kind: estimate, source: the test}
"""

DISK = """\
kind: estimate
source: the test
test_images: {coco_2017_val: 100}
bytes_per_detection: {bbox: 100, segm: 200, keypoints: 300, voc: 10}
"""


@pytest.fixture
def costs(tmp_path):
    folder = tmp_path / "costs"
    folder.mkdir()
    (folder / "testgpu.yaml").write_text(TABLE)
    (folder / "disk.yaml").write_text(DISK)
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(SWEEP)
    return str(folder), str(sweep)


def _model_sizes(mode):
    """(state dict values, trained parameter values) of the real model, built on the CPU."""
    from detectron2.modeling import build_model

    from transfer.training.config import build_config

    opts = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "TRANSFER.MODE", mode]
    cfg = build_config(os.path.join(CONFIGS_DIR, "transfer", "coco_mask_rcnn_R_50_FPN_1x.yaml"), opts,
                       world_size=8, has_cuda=True)
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    return (sum(t.numel() for t in model.state_dict().values()),
            sum(p.numel() for p in model.parameters() if p.requires_grad))


def test_estimate_matches_hand_arithmetic(costs):
    from transfer.launch.estimate import estimate_sweep, format_estimate

    folder, sweep = costs
    est = estimate_sweep(sweep, "testgpu", costs_dir=folder)
    runs = {r.id: r for r in est.runs}
    assert len(runs) == 8  # 2 tasks x 1 backbone x 2 modes x 2 seeds

    # 1000 iterations x 16 images on the reference 8 GPUs; 0.5 s/iter x 8 GPUs / 16 images = 0.25 GPU-s/image
    # -> 4000 GPU-s = 1.1111 h, x2 fine-tuned, x0.5 frozen (FPN factors)
    ft = runs["coco_mask_rcnn_R_50_FPN_1x/random/finetune/seed0"]
    fr = runs["coco_mask_rcnn_R_50_FPN_1x/random/frozen/seed1"]
    assert ft.train_gpu_hours == pytest.approx(16000 * 0.25 * 2.0 / 3600)
    assert fr.train_gpu_hours == pytest.approx(16000 * 0.25 * 0.5 / 3600)
    # evaluations at 400, 800 and the end: 3 x 100 images x 0.1 s
    assert ft.eval_gpu_hours == pytest.approx(3 * 100 * 0.1 / 3600)
    assert ft.wall_hours == pytest.approx((ft.train_gpu_hours + ft.eval_gpu_hours) / 8)
    # checkpoints at 300, 600, 900 and model_final: 4 files of (values + momentum of trained values) x 4 bytes
    for run, mode in ((ft, "finetune"), (fr, "frozen")):
        state, trained = _model_sizes(mode)
        assert run.checkpoint_files == 4
        assert run.checkpoint_bytes == 4 * (state + trained) * 4
        # 100 test images x 100 detections x (box 100 + mask 200) bytes
        assert run.prediction_bytes == 100 * 100 * 300
        assert "figure of R-50, run R-18" in run.notes
    # the keypoint task has no figure in this table: no GPU-hours, disk still counted (box + keypoints)
    kp = runs["coco_keypoint_rcnn_R_50_FPN_1x/random/frozen/seed0"]
    assert kp.train_gpu_hours is None and kp.eval_gpu_hours is None
    assert any("no figure for coco_keypoint_rcnn_R_50_FPN_1x" in n for n in kp.notes)
    assert any("keypoints_coco_2017_val" in n for n in kp.notes)  # test set size unknown to this disk table
    assert est.total("train_gpu_hours") == pytest.approx(2 * (ft.train_gpu_hours + fr.train_gpu_hours))

    text = format_estimate(est)
    assert "tiny_estimate" in text and "TestGPU" in text
    for run_id in runs:
        assert run_id in text
    assert "total (8 runs)" in text
    assert "mode finetune: C4 x3, FPN x2; estimate: the test" in text


def test_processes_do_not_change_gpu_hours(costs):
    from transfer.launch.estimate import estimate_sweep

    folder, sweep = costs
    eight = estimate_sweep(sweep, "testgpu", costs_dir=folder)
    two = estimate_sweep(sweep, "testgpu", resources={"gpus_per_node": 2}, costs_dir=folder)
    a, b = eight.runs[0], two.runs[0]
    # the linear rule: 4000 iterations of 4 images on 2 GPUs, the same images and GPU-seconds
    assert b.train_gpu_hours == pytest.approx(a.train_gpu_hours)
    assert b.wall_hours == pytest.approx((b.train_gpu_hours + b.eval_gpu_hours) / 2)
    # ... but 4000 // 1200 + 1 checkpoints (the period scales too): the same 4
    assert b.checkpoint_files == a.checkpoint_files


def test_unknown_gpu_and_bad_table_are_one_line_errors(costs, tmp_path):
    from transfer.launch.costs import CostError, load_cost_table
    from transfer.launch.estimate import estimate_sweep

    folder, sweep = costs
    with pytest.raises(CostError, match="no cost table for GPU type 'h999'.*known: testgpu"):
        estimate_sweep(sweep, "h999", costs_dir=folder)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.yaml").write_text(TABLE.replace("train_s_per_iter: 0.5", "train_s_per_iter: -1"))
    with pytest.raises(CostError, match="models.coco_mask_rcnn_R_50_FPN.train_s_per_iter: expected a positive"):
        load_cost_table("x", str(bad))


def test_shipped_table_covers_the_shipped_tasks():
    from transfer.launch.costs import KINDS, load_cost_table, load_disk_table

    table = load_cost_table("v100")
    assert table.figure("coco_mask_rcnn_R_50_FPN_1x").train_s_per_iter == 0.261  # MODEL_ZOO.md
    tasks = sorted(f[:-5] for f in os.listdir(os.path.join(CONFIGS_DIR, "transfer"))
                   if f.endswith(".yaml") and not f.startswith("Base-"))
    missing = [t for t in tasks if table.figure(t) is None]
    assert missing == ["coco_mask_rcnn_X_152_32x8d_FPN_1x"]  # no published training time
    assert all(f.kind in KINDS and f.source for f in table.models.values())
    assert set(table.modes) == {"finetune", "frozen"}
    disk = load_disk_table()
    assert disk.test_images["coco_2017_val"] == 5000


def test_submit_sweep_estimate_prints_and_submits_nothing(submit_cli, tmp_path):
    code, out, err = submit_cli(["sweep", os.path.join(CONFIGS_DIR, "sweeps", "demo.yaml"), "--estimate",
                                 "--output-root", str(tmp_path / "root")])
    assert code == 0, err
    assert "Cost estimate of sweep demo on V100" in out
    assert "voc_faster_rcnn_R_50_C4_24k/random/frozen/seed1" in out
    assert not (tmp_path / "root").exists()
    code, out, err = submit_cli(["sweep", os.path.join(CONFIGS_DIR, "sweeps", "demo.yaml"), "--estimate", "nope"])
    assert code == 2 and err.startswith("submit sweep: error: no cost table for GPU type 'nope'")
