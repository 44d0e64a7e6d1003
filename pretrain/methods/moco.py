"""MoCo (He et al. 2020; v2: Chen et al. 2020) and InfoMin's PIRL-style JigSaw branch (Tian et al. 2020).

- ``encoder_q``: query encoder, a torchvision ResNet with the projection head in ``fc`` (``MODEL.HEAD``).
- ``encoder_k``: key encoder, same network, no gradients, updated after every step by the fused
  momentum update ``k <- m k + (1 - m) q`` over all parameters at once (``torch._foreach_*``).
- ``queue`` (K x D) and ``queue_ptr``: a ring buffer of L2-normalised keys. Keys of all processes are
  gathered (rank order) and written at the pointer, wrapping around K.
- Shuffle BN: with several processes, the key batch is shuffled across processes before the key encoder
  and unshuffled after it, so that BatchNorm statistics cannot leak which key matches which query.
- Loss: InfoNCE with temperature T, one positive (the key of the other view) against the K queued keys:
  ``-log exp(q.k/t) / (exp(q.k/t) + sum_j exp(q.n_j/t))``. Logged MI bound: ``log(K+1) - loss``.
- JigSaw branch (``JIGSAW.ENABLED``; InfoMin, PyContrast's ``RGBMultiHeads``/``JigsawHead``): the shuffled
  tiles go through the query encoder (without its head) tile by tile; ``jigsaw_head.fc1`` (same form as
  the projection head) maps each tile, ``jigsaw_head.fc2`` joins the G*G tile embeddings into one query
  that is contrasted with the same key and queue; ``loss = (1 - w) L_inst + w L_jig``.

The momentum update and the enqueue run in :meth:`MoCo.on_step_end`, after the optimizer step: the same
order of operations as the official code (which updates the key encoder at the start of the next
forward), and the queue is never modified while autograd still needs it.
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.backbones import build_encoder, feature_dim, projection_head, trunk_forward
from pretrain.common.distributed import all_gather_cat, batch_shuffle, batch_unshuffle, get_world_size
from pretrain.methods.base import Method, infonce_logits

__all__ = ["MoCo", "JigsawHead", "momentum_update"]


@torch.no_grad()
def momentum_update(target, source, m):
    """``t <- m t + (1 - m) s`` for every pair of tensors: ``t + (1 - m)(s - t)``, one fused pass over the
    lists (``torch._foreach_lerp_``)."""
    target, source = list(target), list(source)
    if not target:
        return
    torch._foreach_lerp_(target, source, 1.0 - m)


class JigsawHead(nn.Module):
    """Tile features (B*n x C, tiles of an image consecutive) -> one embedding per image (B x dim)."""

    def __init__(self, dim_in, dim_out, num_tiles, head="mlp"):
        super().__init__()
        self.num_tiles = num_tiles
        self.fc1 = projection_head(dim_in, dim_out, head)
        self.fc2 = nn.Linear(dim_out * num_tiles, dim_out)

    def forward(self, x):
        x = self.fc1(x)
        return self.fc2(x.reshape(-1, self.num_tiles * x.shape[1]))


class MoCo(Method):
    loss_form = "infonce"

    def __init__(self, cfg, num_train_images=None):
        super().__init__(cfg)
        self.K, self.m, self.T = int(cfg.MOCO.K), float(cfg.MOCO.M), float(cfg.MOCO.T)
        self.shuffle_bn = bool(cfg.MOCO.SHUFFLE_BN)
        dim = int(cfg.MODEL.DIM)
        self.encoder_q = build_encoder(cfg.MODEL.ARCH, cfg.MODEL.HEAD, dim)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(self.K, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.jigsaw_weight = 0.0
        if cfg.JIGSAW.ENABLED:
            self.jigsaw_weight = float(cfg.JIGSAW.WEIGHT)
            self.jigsaw_head = JigsawHead(feature_dim(cfg.MODEL.ARCH), dim, cfg.JIGSAW.GRID ** 2, cfg.MODEL.HEAD)
        self._pending_keys = None

    @classmethod
    def check_config(cls, cfg):
        m = cfg.MOCO
        if cfg.INPUT.NUM_VIEWS < 2:
            raise ValueError(f"INPUT.NUM_VIEWS {cfg.INPUT.NUM_VIEWS}: MoCo needs 2 views (query and key)")
        if m.K < cfg.SOLVER.BATCH_SIZE:
            raise ValueError(f"MOCO.K {m.K} must be at least SOLVER.BATCH_SIZE {cfg.SOLVER.BATCH_SIZE} (every "
                             "step enqueues a global batch of keys)")
        if not 0.0 <= m.M < 1.0:
            raise ValueError(f"MOCO.M {m.M} must be in [0, 1)")
        if m.T <= 0:
            raise ValueError(f"MOCO.T {m.T} must be positive")
        if cfg.JIGSAW.ENABLED and not 0.0 < cfg.JIGSAW.WEIGHT <= 1.0:
            raise ValueError(f"JIGSAW.WEIGHT {cfg.JIGSAW.WEIGHT} must be in (0, 1]")

    @property
    def num_negatives(self):
        return self.K

    # ------------------------------------------------------------------ pieces
    @torch.no_grad()
    def keys(self, images):
        """L2-normalised keys of uint8 ``images`` from the key encoder (with shuffle BN across processes)."""
        shuffle = self.shuffle_bn and get_world_size() > 1
        if shuffle:  # shuffle the uint8 images: a quarter of the bytes of the float batch
            images, idx_unshuffle = batch_shuffle(images)
        k = self.encoder_k(self.images(images)).float()
        if shuffle:
            k = batch_unshuffle(k, idx_unshuffle)
        return F.normalize(k, dim=1)

    @torch.no_grad()
    def enqueue(self, keys):
        """Write ``keys`` (N x D; N <= K) into the ring buffer at the pointer, wrapping around."""
        keys = keys.detach().to(self.queue.dtype)
        n = keys.shape[0]
        idx = (torch.arange(n, device=keys.device) + self.queue_ptr) % self.K
        self.queue.index_copy_(0, idx, keys)
        self.queue_ptr.add_(n).remainder_(self.K)

    @torch.no_grad()
    def momentum_update(self):
        momentum_update(self.encoder_k.parameters(), self.encoder_q.parameters(), self.m)

    def _contrast(self, q, k):
        with torch.autocast(q.device.type, enabled=False):
            q = F.normalize(q.float(), dim=1)
            logits = infonce_logits(q, k, self.queue, self.T)
            labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
            loss = F.cross_entropy(logits, labels)
            acc = (logits.argmax(dim=1) == 0).float().mean() * 100
        return loss, acc.detach()

    # ------------------------------------------------------------------ the loop's interface
    def forward(self, batch):
        q = self.encoder_q(self.images(batch["view1"]))
        k = self.keys(batch["view2"])
        loss_inst, acc_inst = self._contrast(q, k)
        out = {"loss_inst": loss_inst.detach(), "acc_inst": acc_inst, "mi_loss": loss_inst.detach()}
        loss = loss_inst
        if self.jigsaw_weight > 0:
            tiles = batch["jigsaw"]
            n = tiles.shape[1]
            f = trunk_forward(self.encoder_q, self.images(tiles.flatten(0, 1)))
            q_jig = self.jigsaw_head(f)
            assert q_jig.shape[0] * n == f.shape[0]
            loss_jig, acc_jig = self._contrast(q_jig, k)
            out.update(loss_jig=loss_jig.detach(), acc_jig=acc_jig)
            loss = (1 - self.jigsaw_weight) * loss_inst + self.jigsaw_weight * loss_jig
        if self.training:
            self._pending_keys = all_gather_cat(k)
        out["loss"] = loss
        return out

    def on_step_end(self, iteration):
        self.momentum_update()
        if self._pending_keys is not None:
            self.enqueue(self._pending_keys)
            self._pending_keys = None
