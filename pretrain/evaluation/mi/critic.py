"""The critic of a post-training MI estimate: a projection head on frozen features.

Like the projection head of MoCo v2 / SimCLR (what Lee et al. use): a fixed standardisation of the frozen
features (per-dimension mean and std of the training pairs), ``Linear(D, H) - ReLU - Linear(H, 128)``, L2
normalisation, and a learnable temperature ``t`` (initial 0.1, kept in [0.01, 1]). ``H`` defaults to ``D``
clamped to [256, 2048] (MoCo v2: ``H = D = 2048`` for a ResNet-50). Both sides share the head when they
live in the same space (always for images), as SimCLR's head does.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TEMPERATURE_RANGE", "Critic", "hidden_width"]

TEMPERATURE_RANGE = (0.01, 1.0)


def hidden_width(in_dim, hidden_dim=None):
    """The head's hidden width: ``hidden_dim``, else ``in_dim`` clamped to [256, 2048]."""
    return int(hidden_dim) if hidden_dim else min(max(int(in_dim), 256), 2048)


class Critic(nn.Module):
    """Projection-head critic on frozen features (see the module docstring).

    ``dims``: feature dimensions of the two sides; one shared head when they are equal and ``shared``.
    ``stats``: ``(mean, std)`` per side (tensors of the side's dimension) for the fixed standardisation.
    """

    def __init__(self, dims, stats, hidden_dim=None, out_dim=128, temperature=0.1, learn_temperature=True,
                 shared=True):
        super().__init__()
        da, db = (int(d) for d in dims)
        self.shared = bool(shared) and da == db
        self.head_a = self._head(da, hidden_dim, out_dim)
        self.head_b = self.head_a if self.shared else self._head(db, hidden_dim, out_dim)
        (mean_a, std_a), (mean_b, std_b) = stats
        for name, value in (("mean_a", mean_a), ("std_a", std_a), ("mean_b", mean_b), ("std_b", std_b)):
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.float32).clone())
        log_t = torch.tensor(math.log(temperature), dtype=torch.float32)
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    @staticmethod
    def _head(in_dim, hidden_dim, out_dim):
        hidden = hidden_width(in_dim, hidden_dim)
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    @property
    def temperature(self):
        lo, hi = TEMPERATURE_RANGE
        return self.log_temperature.exp().clamp(lo, hi)

    def forward(self, a, b):
        za = F.normalize(self.head_a((a - self.mean_a) / self.std_a), dim=1)
        zb = F.normalize(self.head_b((b - self.mean_b) / self.std_b), dim=1)
        return za, zb

