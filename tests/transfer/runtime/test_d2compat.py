"""The Detectron2 runtime fixes: each one works, and each one is applied only when needed."""
import argparse
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

import transfer
from transfer.runtime import compat as d2compat
from pretrain.common.paths import REPO_ROOT
REPO = REPO_ROOT
needs_standin = pytest.mark.skipif(
    "detectron2._C" not in d2compat.APPLIED, reason="Detectron2 here has its compiled ops")


def _applied_after(pre_code):
    """APPLIED in a fresh interpreter that runs ``pre_code`` and then imports transfer."""
    code = f"{pre_code}\nimport json, transfer\nprint(json.dumps(transfer.runtime.compat.APPLIED))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_standin
def test_deformable_conv_raises_clear_error():
    # on CPU Detectron2 0.6 runs the deformable forward through torchvision and refuses the rest itself;
    # on a GPU it calls these ops of _C, which the stand-in refuses with the op's name
    from detectron2.layers import deform_conv

    with pytest.raises(d2compat.CompiledOpMissing, match="deform_conv_forward.*deformable convolution.*from source"):
        deform_conv._C.deform_conv_forward(torch.zeros(1, 4, 8, 8), torch.zeros(4, 4, 3, 3))
    with pytest.raises(d2compat.CompiledOpMissing, match="modulated_deform_conv_forward.*deformable"):
        deform_conv._C.modulated_deform_conv_forward()


@needs_standin
def test_standin_answers_version_queries_and_tolerates_introspection():
    from detectron2 import _C
    from detectron2.utils.collect_env import collect_env_info

    assert isinstance(_C.get_compiler_version(), str)
    assert isinstance(_C.get_cuda_version(), str)
    assert _C.has_cuda() is False
    for dunder in ("__file__", "__wrapped__", "__path__", "__all__"):
        assert not hasattr(_C, dunder)
    assert "no compiled ops" in collect_env_info()
    with pytest.raises(d2compat.CompiledOpMissing, match="nms_rotated.*rotated boxes"):
        _C.nms_rotated(torch.zeros(0, 5), torch.zeros(0), 0.5)


def test_default_setup_runs_on_cpu(tmp_path):
    from detectron2.engine import default_setup
    from transfer.training.config import get_transfer_cfg

    cfg = get_transfer_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.MODEL.DEVICE = "cpu"
    default_setup(cfg, argparse.Namespace(config_file="", eval_only=False))
    assert (tmp_path / "config.yaml").is_file()


def test_numpy_aliases_and_pil_linear_work():
    from PIL import Image

    assert np.dtype(np.float) == np.float64 and np.dtype(np.int) == np.int_ and np.dtype(np.bool) == np.bool_
    assert Image.LINEAR == Image.BILINEAR
    # Detectron2 code that uses them
    from detectron2.structures.masks import polygons_to_bitmask

    mask = polygons_to_bitmask([np.array([0, 0, 4, 0, 4, 4, 0, 4], dtype=float)], 6, 6)
    assert mask.dtype == bool and mask.sum() > 0


def test_model_zoo_config_files_resolve():
    from detectron2 import model_zoo

    path = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    assert os.path.isfile(path)
    cfg = model_zoo.get_config("COCO-Detection/faster_rcnn_R_50_C4_1x.yaml")
    assert cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeads"


def test_detectron2_projects_are_installed():
    import detectron2.projects.point_rend as point_rend

    assert hasattr(point_rend, "add_pointrend_config")


@pytest.mark.parametrize("pre, fix, check", [
    ("import numpy as np; np.int = 'mine'", "numpy aliases",
     "import numpy as np; assert np.int == 'mine'"),
    ("from PIL import Image; Image.LINEAR = 12345", "PIL.Image.LINEAR",
     "from PIL import Image; assert Image.LINEAR == 12345"),
    ("import sys, types; sys.modules['pkg_resources'] = types.ModuleType('pkg_resources')", "pkg_resources",
     "import sys; assert not hasattr(sys.modules['pkg_resources'], 'resource_filename')"),
    ("import sys, types; sys.modules['detectron2._C'] = types.ModuleType('detectron2._C')", "detectron2._C",
     "import sys; assert 'detectron2.evaluation.fast_eval_api' not in sys.modules"),
])
def test_fix_is_a_noop_where_the_real_thing_exists(pre, fix, check):
    code = f"{pre}\nimport json, transfer\n{check}\nprint(json.dumps(transfer.runtime.compat.APPLIED))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    applied = json.loads(out.stdout.strip().splitlines()[-1])
    if fix == "numpy aliases":
        assert not any("int" in a.split(": ")[-1].split(",") for a in applied if a.startswith(fix))
    else:
        assert fix not in applied


def test_compiled_ops_found_on_disk_means_no_standin(tmp_path):
    pkg = tmp_path / "detectron2"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("__version__ = '0.6'\n")
    (pkg / "_C.py").write_text("def has_cuda():\n    return False\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    code = "import json, transfer; print(json.dumps(transfer.runtime.compat.APPLIED))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    applied = json.loads(out.stdout.strip().splitlines()[-1])
    assert "detectron2._C" not in applied and "detectron2.evaluation.fast_eval_api" not in applied


def test_map_dataset_fallback_when_the_mapper_rejects_a_sample():
    from detectron2.data.common import MapDataset

    dataset = MapDataset(list(range(6)), lambda x: None if x in (0, 1) else x)
    drawn = {dataset[0] for _ in range(20)}
    assert drawn and drawn <= {2, 3, 4, 5}


def test_map_dataset_fix_skipped_when_python_accepts_sets(monkeypatch):
    class FakeMapDataset:
        def __getitem__(self, idx):
            return "original"

    module = types.SimpleNamespace(MapDataset=FakeMapDataset, logging=None, __name__="fake")
    monkeypatch.setattr(d2compat, "_python_refuses_sample_of_set", lambda: False)
    d2compat._fix_map_dataset(module)
    assert FakeMapDataset()[0] == "original" and not hasattr(FakeMapDataset, "_fallback_fixed")


def test_checkpointer_loads_numpy_but_still_refuses_objects(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    model = torch.nn.Linear(3, 2)
    checkpointer = DetectionCheckpointer(model, save_dir=str(tmp_path))
    checkpointer.save("ckpt", stats=np.arange(4, dtype=np.int64), scale=np.float32(0.5))
    fresh = torch.nn.Linear(3, 2)
    extra = DetectionCheckpointer(fresh).load(str(tmp_path / "ckpt.pth"))
    assert torch.equal(fresh.weight, model.weight)
    assert np.array_equal(extra["stats"], np.arange(4)) and extra["scale"] == np.float32(0.5)

    torch.save({"model": model.state_dict(), "args": argparse.Namespace(lr=1)}, tmp_path / "unsafe.pth")
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        DetectionCheckpointer(torch.nn.Linear(3, 2)).load(str(tmp_path / "unsafe.pth"))


def test_checkpointer_fix_skipped_when_torch_loads_numpy(monkeypatch):
    class FakeCheckpointer:
        def _load_file(self, filename):
            return "original"

    monkeypatch.setattr(d2compat, "_torch_load_refuses_numpy", lambda: False)
    d2compat._fix_checkpointer(types.SimpleNamespace(DetectionCheckpointer=FakeCheckpointer))
    assert FakeCheckpointer()._load_file("x") == "original" and not hasattr(FakeCheckpointer, "_numpy_fixed")


def test_apply_is_idempotent():
    before = list(d2compat.APPLIED)
    d2compat.apply()
    transfer.runtime.compat.apply()
    assert d2compat.APPLIED == before


def test_torch_scheduler_state_survives_a_resume(tmp_path):
    """Detectron2 0.6's own test_checkpoint_resume: a torch StepLR resumes at its last epoch, not at 0."""
    import itertools

    import torch
    from detectron2.checkpoint import Checkpointer
    from detectron2.engine import SimpleTrainer, hooks

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))

        def forward(self, x):
            return {"loss": (self.w * x).sum() ** 2}

    def trainer():
        model = Model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
        t = SimpleTrainer(model, itertools.repeat(torch.ones(2)), opt)
        t.register_hooks([hooks.LRScheduler(opt, scheduler)])
        return t, scheduler, Checkpointer(model, str(tmp_path), trainer=t)

    first, scheduler, checkpointer = trainer()
    first.train(0, 12)
    assert scheduler.last_epoch == 12
    checkpointer.save("checkpoint")
    second, resumed, checkpointer = trainer()
    checkpointer.resume_or_load(str(tmp_path / "checkpoint.pth"))
    assert second.iter == first.iter
    assert resumed.last_epoch == 12
    assert resumed.get_last_lr() == scheduler.get_last_lr()
