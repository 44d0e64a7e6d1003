"""pretrain.evaluation.frozen: every route gives the features of torchvision's own ResNet on the same normalised input."""
import os

import pytest
import torch
import torchvision
from torch import nn

from pretrain.backbones import trunk_forward
from pretrain.evaluation.frozen import FrozenEncoder, FrozenEncoderError, load_frozen_encoder
from pretrain.methods import METHODS
from pretrain.methods.base import Method
from pretrain.common.safe_load import dump_pickle
from pretrain.checkpoints.backbone import extract_backbone
from pretrain.checkpoints.conventions import FAIR_INPUT, TORCHVISION_INPUT
from transfer.conversion.convert import detectron2_payload

RGB_MEAN, RGB_STD = TORCHVISION_INPUT["MODEL.PIXEL_MEAN"], TORCHVISION_INPUT["MODEL.PIXEL_STD"]


def random_resnet18(seed=0):
    """torchvision resnet18 with random weights and random BatchNorm statistics (so eval mode matters)."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(weights=None)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def images(n=3, size=48, seed=1):
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def reference(net, x, mean, std, bgr=False):
    """torchvision's trunk on the input normalised by hand (0..255 scale)."""
    x = x.float()
    if bgr:
        x = x[:, [2, 1, 0]]
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return trunk_forward(net, x)


def write_pkl(net, path, input_cfg=None):
    backbone = extract_backbone(dict(net.state_dict()), source="test")
    if input_cfg is not None:
        backbone.input_cfg = dict(input_cfg)
    dump_pickle(detectron2_payload(backbone, {"format": "torchvision"}), str(path))
    return str(path)


def test_detectron2_pkl_rgb(tmp_path):
    net = random_resnet18()
    enc = load_frozen_encoder(write_pkl(net, tmp_path / "r18.pkl"))
    assert isinstance(enc, FrozenEncoder) and enc.feature_dim == 512
    assert enc.description == "resnet18 from r18.pkl (detectron2 layout)"
    x = images()
    out = enc(x)
    assert out.dtype == torch.float32 and out.shape == (3, 512) and not out.requires_grad
    torch.testing.assert_close(out, reference(net, x, RGB_MEAN, RGB_STD), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out.norm(dim=1), torch.ones(3))  # not L2-normalised


def test_detectron2_pkl_bgr_meta(tmp_path):
    """BGR weights (Detectron2's FAIR convention, its own mean/std): inputs are flipped and normalised by the meta."""
    net = random_resnet18(seed=2)
    enc = load_frozen_encoder(write_pkl(net, tmp_path / "bgr.pkl", FAIR_INPUT))
    assert enc.bgr
    x = images(seed=3)
    want = reference(net, x, FAIR_INPUT["MODEL.PIXEL_MEAN"], FAIR_INPUT["MODEL.PIXEL_STD"], bgr=True)
    torch.testing.assert_close(enc(x), want, rtol=1e-4, atol=1e-5)
    # and it is really different from reading the same weights as RGB
    assert not torch.allclose(enc(x), reference(net, x, RGB_MEAN, RGB_STD), rtol=1e-3, atol=1e-3)


def test_torchvision_state_dict_and_pretrain_checkpoint(tmp_path):
    net = random_resnet18(seed=4)
    x = images(seed=5)
    want = reference(net, x, RGB_MEAN, RGB_STD)
    tv = tmp_path / "tv.pth"
    torch.save(net.state_dict(), tv)
    enc = load_frozen_encoder(tv)
    assert "torchvision layout" in enc.description
    torch.testing.assert_close(enc(x), want, rtol=1e-4, atol=1e-5)
    # this project's pretraining checkpoint (MoCo layout: encoder_q with a projection head in fc, a queue)
    sd = {f"encoder_q.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    sd.update({"encoder_q.fc.weight": torch.randn(128, 512), "encoder_q.fc.bias": torch.zeros(128),
               "queue": torch.randn(16, 128), "queue_ptr": torch.zeros(1, dtype=torch.long)})
    ckpt = tmp_path / "checkpoint_final.pth"
    torch.save({"state_dict": sd, "config": "MODEL:\n  ARCH: resnet18\n", "method": "moco", "arch": "resnet18",
                "iter": 10, "epoch": 1}, ckpt)
    enc = load_frozen_encoder(ckpt)
    assert "pretrain layout" in enc.description
    torch.testing.assert_close(enc(x), want, rtol=1e-4, atol=1e-5)


def test_always_eval_and_frozen(tmp_path):
    net = random_resnet18()
    enc = load_frozen_encoder(write_pkl(net, tmp_path / "r18.pkl"))
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    assert not any(p.requires_grad for p in enc.parameters())
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        enc(torch.zeros(3, 8, 8, dtype=torch.uint8))


# ------------------------------------------------------------------ a registered method the converter refuses
class ToyTwoView(Method):
    """A CMC-like method: an L encoder (1 channel) and an ab encoder (2 channels), a memory bank per view."""

    def __init__(self, cfg, num_train_images=None):
        super().__init__(cfg)
        self.encoder_l = torchvision.models.resnet18(weights=None)
        self.encoder_l.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
        self.encoder_ab = torchvision.models.resnet18(weights=None)
        self.encoder_ab.conv1 = nn.Conv2d(2, 64, 7, 2, 3, bias=False)
        self.register_buffer("memory_l", torch.zeros(num_train_images or 1, 128))

    @torch.no_grad()
    def features(self, images, kind="embedding"):
        x = self.images(images)
        return torch.cat([trunk_forward(self.encoder_l, x[:, :1]), trunk_forward(self.encoder_ab, x[:, 1:])], 1)


def test_registered_method_is_rebuilt_from_its_config(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "toy_two_view", f"{__name__}:ToyTwoView")
    from pretrain.config import get_cfg

    cfg = get_cfg()
    cfg.MODEL.METHOD = "toy_two_view"
    cfg.MODEL.ARCH = "resnet18"
    torch.manual_seed(0)
    method = ToyTwoView(cfg, num_train_images=7).eval()
    method.memory_l.normal_()
    ckpt = tmp_path / "cmc.pth"
    torch.save({"state_dict": method.state_dict(), "config": cfg.dump(), "method": "toy_two_view",
                "arch": "resnet18", "iter": 1, "epoch": 1}, ckpt)
    enc = load_frozen_encoder(ckpt)
    assert enc.feature_dim == 1024 and "toy_two_view" in enc.description
    assert torch.equal(enc.method.memory_l, method.memory_l)
    x = images(n=2, size=40)
    torch.testing.assert_close(enc(x), method.features(x, kind="backbone"))
    # the same file with its method unregistered: one line that says why
    monkeypatch.delitem(METHODS, "toy_two_view")
    with pytest.raises(FrozenEncoderError) as err:
        load_frozen_encoder(ckpt)
    msg = str(err.value)
    assert "\n" not in msg and "not registered" in msg and str(ckpt) in msg


@pytest.mark.parametrize("case", ["missing", "directory", "unknown_layout", "cmc_not_ours", "bad_format"])
def test_errors_are_one_line(tmp_path, case):
    path = tmp_path / "w.pth"
    kwargs = {}
    if case == "missing":
        expect = "no such file"
    elif case == "directory":
        path = tmp_path
        expect = "is a directory"
    elif case == "unknown_layout":
        torch.save({"foo.weight": torch.zeros(3)}, path)
        expect = "unknown checkpoint layout"
    elif case == "cmc_not_ours":  # CMC's official layout: refused by the converter, not our method
        torch.save({"model": {"module.l_to_ab.conv1.weight": torch.zeros(64, 1, 7, 7)}}, path)
        expect = "CMC"
    else:
        torch.save(dict(random_resnet18().state_dict()), path)
        kwargs = {"fmt": "vissl"}
        expect = "is not a vissl checkpoint"
    with pytest.raises(FrozenEncoderError) as err:
        load_frozen_encoder(path, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg and expect in msg and os.fspath(path) in msg, msg
