"""CMC: Contrastive Multiview Coding on the L and ab views (Tian et al. 2019), with Wu et al. (2020)'s
negatives: CMC-BALL, CMC-ANN and the annealed CMC-BALL+ / CMC-ANN+ (``CMC.NEGATIVES``, ``BALL.ANNEAL``).

- Views: the loader ships one uint8 RGB crop (``view1``, recipe ``cmc``: no grayscale); on the device it is
  converted to CIE Lab and split into L (1 channel) and ab (2 channels), each normalised to [-1, 1] with
  CMC's constants (:mod:`pretrain.data.lab_color`).
- ``encoder_l`` and ``encoder_ab``: torchvision ResNets (``MODEL.ARCH``) whose ``conv1`` takes 1 and 2
  channels, each with its own projection head (``MODEL.HEAD``, ``MODEL.DIM``) in ``fc``. ``CMC.WIDTH`` scales
  every width of each encoder (stem, stages, features: CMC's ResNet-50 x0.5 / x1 / x2 per view); the
  stem and the stage widths are ``round(64 w)``, ``round(128 w)``, ... (ResNeXt keeps its groups).
- ``memory_l`` and ``memory_ab``: one memory bank per view (:class:`~pretrain.methods.memory_bank.MemoryBank`, rate
  ``BANK.MOMENTUM``), one entry per training image.
- Loss (Wu et al. Eq. 3, InfoNCE form as their Sec. 4 recommends; temperature ``BANK.T``): the L embedding
  of image i is the anchor against the ab bank (positive ``M_ab[i]``, K negatives drawn from ``M_ab``) and
  the ab embedding the anchor against the L bank::

      L_CMC = L_IR(z_l, M_ab) + L_IR(z_ab, M_l),
      L_IR(z, M) = -log exp(z.M[i]/t) / (exp(z.M[i]/t) + sum_k exp(z.M[n_k]/t))

  After the optimizer step each bank moves towards its own view's embeddings of the step.
- Negatives (``CMC.NEGATIVES``, :func:`pretrain.methods.negatives.build_negative_sampler`, one sampler per
  direction, each with the bank it draws from: the L anchor's sampler gets the L embedding and ``M_ab``, the
  ab anchor's the ab embedding and ``M_l``): ``"uniform"`` (CMC): K = ``BANK.NUM_NEGATIVES`` entries drawn
  uniformly from the other N - 1 entries of the bank (i is never its own negative); ``"ball"`` (CMC-BALL):
  from the background set B_i, the bank entries nearest the anchor; ``"ann"`` (CMC-ANN): B_i minus the
  close neighbours C_i (k-means of that bank, recomputed every epoch); ``BALL.ANNEAL`` / ``CLUSTER.ANNEAL``
  give the "+" variants. Invalid slots (variable-size sets) are masked out of the sum.
- Logged MI: ``mi_loss`` is the mean of the two terms, ``L_CMC / 2``: by Wu et al. Lemma 3.1,
  ``E[L_CMC] / 2`` is the same bound as IR's, so ``mi_bound = log(K + 1) - L_CMC / 2`` (loss form "bank").

Features (kNN monitor, linear evaluation): each view's encoder output (``"embedding"``: the head; ``"backbone"``:
the pooled trunk features) is L2-normalised, the two are concatenated (L first) and divided by sqrt(2): a unit
vector whose cosine similarity is the mean of the two views' cosines (CMC evaluates the concatenation).

A checkpoint of this method is not an RGB backbone: ``transfer/conversion/convert.py`` refuses it for Detectron2.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms as T

from pretrain.backbones import build_encoder, parse_arch, projection_head, trunk_forward
from pretrain.data.lab_color import split_lab
from pretrain.methods.memory_bank import MemoryBank
from pretrain.methods.base import Method
from pretrain.methods.ir import BankMethod, bank_infonce, masked_logits
from pretrain.methods.negatives import build_negative_sampler

__all__ = ["CMC", "build_view_encoder", "NEGATIVES"]

NEGATIVES = ("uniform", "ball", "ann")


def _init(module):
    """torchvision ResNet's initialisation for the modules built here."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_view_encoder(arch, in_channels, head="linear", dim=128, width=1.0):
    """A torchvision ``ResNet`` (``MODEL.ARCH``) taking ``in_channels`` input channels, every width scaled by
    ``width``, with the projection head in ``fc``."""
    net = build_encoder(arch, head, dim)
    stem = max(1, int(round(64 * width)))
    if width != 1.0:
        block, layers, _, _ = parse_arch(arch)
        net.inplanes, net.dilation = stem, 1
        net.bn1 = nn.BatchNorm2d(stem)
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            layer = net._make_layer(block, max(1, int(round(planes * width))), n, stride=1 if i == 0 else 2)
            _init(layer)
            setattr(net, f"layer{i + 1}", layer)
        net.fc = projection_head(net.inplanes, dim, head)
        _init(net.bn1)
    net.conv1 = nn.Conv2d(in_channels, stem, kernel_size=7, stride=2, padding=3, bias=False)
    _init(net.conv1)
    return net


def _has_grayscale(transform):
    if isinstance(transform, T.RandomGrayscale) or isinstance(transform, T.Grayscale):
        return True
    return any(_has_grayscale(t) for t in getattr(transform, "transforms", []) or [])


class CMC(Method):
    loss_form = "bank"
    #: two encoders on L and ab inputs: not one RGB ResNet, so never converted to Detectron2 weights (sweeps
    #: evaluate CMC backbones on frozen features only; transfer/launch/pipeline.py reads this)
    rgb_backbone = False

    def __init__(self, cfg, num_train_images=None):
        super().__init__(cfg)
        if not num_train_images:
            raise ValueError("CMC needs the number of training images (one memory-bank entry per image)")
        self.T = float(cfg.BANK.T)
        self.kind = cfg.CMC.NEGATIVES
        dim, width = int(cfg.MODEL.DIM), float(cfg.CMC.WIDTH)
        self.encoder_l = build_view_encoder(cfg.MODEL.ARCH, 1, cfg.MODEL.HEAD, dim, width)
        self.encoder_ab = build_view_encoder(cfg.MODEL.ARCH, 2, cfg.MODEL.HEAD, dim, width)
        n = int(num_train_images)
        self.memory_l = MemoryBank(n, dim, cfg.BANK.MOMENTUM)
        self.memory_ab = MemoryBank(n, dim, cfg.BANK.MOMENTUM)
        # negatives_l: for the L anchor, drawn from memory_ab; negatives_ab: for the ab anchor, from memory_l
        self.negatives_l = self._sampler(n)
        self.negatives_ab = self._sampler(n)
        self._iteration = 0
        self._pending = None

    def _sampler(self, bank_size):
        return build_negative_sampler(self.kind, self.cfg, bank_size)

    @classmethod
    def check_config(cls, cfg):
        from pretrain.data.views import build_views

        if cfg.CMC.NEGATIVES not in NEGATIVES:
            raise ValueError(f"unknown CMC.NEGATIVES {cfg.CMC.NEGATIVES!r}; use {', '.join(NEGATIVES)}")
        if not cfg.CMC.WIDTH > 0 or round(64 * cfg.CMC.WIDTH) < 1:
            raise ValueError(f"CMC.WIDTH {cfg.CMC.WIDTH} must be positive (at least 1/64)")
        if cfg.INPUT.NUM_VIEWS != 1:
            raise ValueError(f"INPUT.NUM_VIEWS {cfg.INPUT.NUM_VIEWS}: CMC takes its L and ab views from one crop; "
                             "set INPUT.NUM_VIEWS 1")
        if cfg.JIGSAW.ENABLED:
            raise ValueError("JIGSAW.ENABLED: CMC has no JigSaw branch; set JIGSAW.ENABLED False")
        b = cfg.BANK
        if b.LOSS != "infonce":
            raise ValueError(f"BANK.LOSS {b.LOSS!r}: CMC here uses the InfoNCE form only (Wu et al. Sec. 4); "
                             "set BANK.LOSS infonce")
        BankMethod._check_bank(cfg)
        if cfg.CMC.NEGATIVES in ("ball", "ann"):
            BankMethod._check_ball(cfg)
        if cfg.CMC.NEGATIVES == "ann":
            BankMethod._check_cluster(cfg)
        try:
            views = build_views(cfg, backend="pil")  # the recipe's torchvision ops
        except (KeyError, ValueError):
            return  # the loop reports an unknown or broken recipe itself
        if _has_grayscale(views.augment):
            raise ValueError(f"INPUT.VIEWS {cfg.INPUT.VIEWS} converts images to grayscale, which leaves CMC's ab view "
                             "empty (Wu et al. B.3 turn it off); use INPUT.VIEWS cmc")

    @property
    def num_negatives(self):
        """K of the MI ceiling: the negatives per anchor (for BALL / ANN the mean valid count of the last
        step, averaged over the two directions)."""
        return max(1, int(round((self.negatives_l.num_negatives() + self.negatives_ab.num_negatives()) / 2)))

    @property
    def online_encoder(self):
        raise AttributeError("CMC has two encoders (encoder_l on L, encoder_ab on ab), no single RGB encoder")

    # ------------------------------------------------------------------ pieces
    def split(self, images):
        """uint8 RGB images -> normalised (L, ab) inputs on the method's device (channels_last if configured)."""
        l, ab = split_lab(images.to(self.pixel_mean.device, non_blocking=True))
        if self.channels_last:
            l = l.contiguous(memory_format=torch.channels_last)
            ab = ab.contiguous(memory_format=torch.channels_last)
        return l, ab

    def _contrast(self, z, indices, bank, sampler):
        """InfoNCE of L2-normalised anchors ``z`` (B x D) against ``bank``: positive ``bank[indices]``, the
        sampler's negatives (invalid slots masked). Returns (loss, accuracy of the positive in %)."""
        memory = bank.memory
        neg_idx, valid = sampler.sample(z.detach(), indices, memory, self._iteration)
        logits, _ = masked_logits(z, memory, indices, neg_idx.to(memory.device), valid.to(memory.device), self.T)
        acc = (logits.argmax(dim=1) == 0).float().mean() * 100
        return bank_infonce(logits), acc.detach()

    # ------------------------------------------------------------------ the loop's interface
    def forward(self, batch):
        indices = batch["index"].to(self.memory_l.memory.device).long()
        l, ab = self.split(batch["view1"])
        z_l, z_ab = self.encoder_l(l), self.encoder_ab(ab)
        with torch.autocast(z_l.device.type, enabled=False):
            z_l, z_ab = F.normalize(z_l.float(), dim=1), F.normalize(z_ab.float(), dim=1)
            loss_l, acc_l = self._contrast(z_l, indices, self.memory_ab, self.negatives_l)
            loss_ab, acc_ab = self._contrast(z_ab, indices, self.memory_l, self.negatives_ab)
        if self.training:
            self._pending = (indices, z_l.detach(), z_ab.detach())
        loss = loss_l + loss_ab
        return {"loss": loss, "mi_loss": loss.detach() / 2, "loss_l": loss_l.detach(), "loss_ab": loss_ab.detach(),
                "acc_l": acc_l, "acc_ab": acc_ab}

    def on_train_start(self, context):
        self._iteration = int(context.get("start_iter", 0))
        for sampler in (self.negatives_l, self.negatives_ab):
            sampler.on_train_start(context)

    def on_epoch_start(self, epoch):
        self.negatives_l.on_epoch_start(epoch, self.memory_ab.memory)
        self.negatives_ab.on_epoch_start(epoch, self.memory_l.memory)

    def on_step_end(self, iteration):
        if self._pending is not None:
            indices, z_l, z_ab = self._pending
            self.memory_l.update(indices, z_l)
            self.memory_ab.update(indices, z_ab)
            self._pending = None
        self._iteration = iteration + 1

    @torch.no_grad()
    def features(self, images, kind="embedding"):
        l, ab = self.split(images)
        if kind == "embedding":
            f_l, f_ab = self.encoder_l(l), self.encoder_ab(ab)
        else:
            f_l, f_ab = trunk_forward(self.encoder_l, l), trunk_forward(self.encoder_ab, ab)
        f = torch.cat([F.normalize(f_l.float(), dim=1), F.normalize(f_ab.float(), dim=1)], dim=1)
        return f / math.sqrt(2.0)

    def extra_state(self):
        return {"negatives_l": self.negatives_l.extra_state(), "negatives_ab": self.negatives_ab.extra_state()}

    def load_extra_state(self, state):
        self.negatives_l.load_extra_state(state.get("negatives_l", {}))
        self.negatives_ab.load_extra_state(state.get("negatives_ab", {}))
