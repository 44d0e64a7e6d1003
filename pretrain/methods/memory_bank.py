"""The memory bank of instance-discrimination methods (Wu et al. 2018; Wu et al. 2020, Sec. 4).

One L2-normalised D-dimensional entry per training image (N x D, a buffer of the method, so it is in the
checkpoint's ``state_dict`` and restored on resume). After every step the entries of the images of the
step move towards their new embeddings with rate ``t`` (Wu et al. 2020 use t = 0.5)::

    m_i <- normalize(t * m_i + (1 - t) * f_i)

With several processes every process holds the whole bank. The indices and embeddings of the step are
gathered from all processes (rank order) and every process applies the same update, so the banks stay
identical; each entry is computed once, by the process whose batch held the image. An index that
appears twice in one global step (the sampler pads the last batch of an epoch with repeats) is updated
once, with its first occurrence, so the result never depends on the order of the scatter.
"""
import torch
import torch.nn.functional as F
from torch import nn

from pretrain.common.distributed import all_gather_cat

__all__ = ["MemoryBank", "first_occurrence"]


def first_occurrence(indices):
    """Boolean mask of the positions of ``indices`` (1-D) that hold the first occurrence of their value."""
    n = indices.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=indices.device)
    order = torch.argsort(indices, stable=True)
    sorted_idx = indices[order]
    first_sorted = torch.ones(n, dtype=torch.bool, device=indices.device)
    first_sorted[1:] = sorted_idx[1:] != sorted_idx[:-1]
    mask = torch.zeros(n, dtype=torch.bool, device=indices.device)
    mask[order] = first_sorted
    return mask


class MemoryBank(nn.Module):
    """N x D bank of L2-normalised embeddings, updated with rate ``momentum`` (t)."""

    def __init__(self, size, dim, momentum=0.5, generator=None):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"memory bank of {size} x {dim}: both must be positive")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"memory bank rate {momentum} must be in [0, 1)")
        self.momentum = float(momentum)
        init = torch.randn(size, dim, generator=generator)
        self.register_buffer("memory", F.normalize(init, dim=1))

    @property
    def size(self):
        return self.memory.shape[0]

    @property
    def dim(self):
        return self.memory.shape[1]

    def forward(self, indices):
        return self.memory[indices]

    @torch.no_grad()
    def update(self, indices, features, gather=True):
        """Move the entries ``indices`` towards ``features`` (N x D, any norm; normalised here). With
        ``gather`` the indices and features of all processes are gathered first (every process must call)."""
        features = F.normalize(features.detach().float(), dim=1)
        indices = indices.detach().to(self.memory.device, torch.long)
        if gather:
            indices = all_gather_cat(indices)
            features = all_gather_cat(features.to(self.memory.device))
        features = features.to(self.memory.device)
        keep = first_occurrence(indices)
        indices, features = indices[keep], features[keep]
        mixed = self.momentum * self.memory[indices] + (1.0 - self.momentum) * features
        self.memory.index_copy_(0, indices, F.normalize(mixed, dim=1))
