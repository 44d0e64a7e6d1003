"""Sources of positive pairs over a finite set of items, and their three-way split.

- :class:`ClassPairs` (same-class sampling, Lee et al. Fig. 1c): an anchor image is drawn uniformly and its
  partner is another image (never itself) of the same class. The other members of the batch are negatives
  even when they share the anchor's class: Lee et al. use the plain NT-Xent loss, whose negatives are
  samples of the marginal, which is what keeps ``I_hat`` a lower bound of the true MI (Proposition II.1).
  Masking them would turn the loss into SupCon's and the bound would be lost
  (:func:`pretrain.evaluation.mi.bound.perfect_encoder_bound` is the price at a finite K_Est).
- :class:`ViewPairs` (augmentation pairing, e.g. SimCLR's): two different augmented views of the same
  image. Views are precomputed, a fixed number per image (each pair picks two of them).
- :class:`TensorPairs`: row ``i`` of ``a`` with row ``i`` of ``b`` (tests: jointly Gaussian variables).
"""
import torch

from pretrain.evaluation.mi.bound import MIError

__all__ = ["MIN_PER_CLASS", "choose_anchors", "held_out_size", "held_out_count", "PairSource", "TensorPairs",
           "ClassPairs", "ViewPairs"]

MIN_PER_CLASS = 6    # same-class pairs need 2 images of a class in each of the training, validation, test items


def choose_anchors(n, k, generator):
    """``k`` anchor items out of ``n``, independently and uniformly (with replacement).

    The bound needs i.i.d. pairs: its negatives must be samples of the marginal. Distinct anchors (as a
    data loader would give) are slightly less likely to share a class, which on a small held-out set lifts
    the estimate above the true MI of the empirical distribution (0.07 bits at 6 bits, 10 images per class).
    """
    return torch.randint(n, (k,), generator=generator)


def held_out_size(n, holdout, grouped=False):
    """How many of ``n`` items (of one class when ``grouped``) :meth:`PairSource.split` holds out: the
    ``holdout`` fraction, rounded, at least 1 (2 of a class, for same-class pairs on each side) and leaving
    as many on the other side."""
    low = 2 if grouped else 1
    return min(max(int(round(holdout * n)), low), n - low)


def held_out_count(num_items, holdout, groups=None):
    """The items :meth:`PairSource.split` holds out of ``num_items`` (stratified by ``groups``, the class id
    per item, when given): the test items of an estimate. Known from the labels alone, before any feature."""
    if groups is None:
        return held_out_size(int(num_items), holdout)
    sizes = torch.bincount(torch.as_tensor(groups, dtype=torch.long).flatten())
    return sum(held_out_size(int(size), holdout, grouped=True) for size in sizes if size > 0)


class PairSource:
    """Positive pairs over a finite set of items. Subclasses implement ``num_items``, ``dims``,
    ``_pairs(anchors, generator)``, ``subset(items)``, ``side_features()`` and may override ``groups()``."""

    def groups(self):
        """Group id per item for a stratified split (None: a plain random split)."""
        return None

    def sample(self, k, generator):
        """A batch of ``k`` i.i.d. positive pairs ``(a, b)`` (k x D each)."""
        return self._pairs(choose_anchors(self.num_items, k, generator), generator)

    def split(self, holdout, generator):
        """(training source, held-out source), ``holdout`` the held-out fraction of the items."""
        groups = self.groups()
        if groups is None:
            n = self.num_items
            n_eval = held_out_size(n, holdout)
            perm = torch.randperm(n, generator=generator)
            train, held = perm[n_eval:], perm[:n_eval]
        else:
            train, held = [], []
            sizes = torch.bincount(groups)
            if int(sizes[sizes > 0].min()) < 4:
                raise MIError("a split for same-class pairing needs at least 4 items per class (2 on each side), "
                              f"one class has {int(sizes[sizes > 0].min())}")
            for g in torch.unique(groups).tolist():
                members = torch.nonzero(groups == g).flatten()
                members = members[torch.randperm(len(members), generator=generator)]
                n_eval = held_out_size(len(members), holdout, grouped=True)
                held.append(members[:n_eval])
                train.append(members[n_eval:])
            train, held = torch.cat(train), torch.cat(held)
        return self.subset(torch.sort(train).values), self.subset(torch.sort(held).values)

    def stats(self):
        """``((mean_a, std_a), (mean_b, std_b))`` of the features per dimension; one pooled pair when both
        sides live in the same space."""
        fa, fb = self.side_features()
        if fa.shape[1] == fb.shape[1]:
            pooled = fa.float() if fa is fb else torch.cat([fa, fb]).float()
            s = (pooled.mean(0), pooled.std(0).clamp_min(1e-6))
            return s, s
        return ((fa.float().mean(0), fa.float().std(0).clamp_min(1e-6)),
                (fb.float().mean(0), fb.float().std(0).clamp_min(1e-6)))

    def to(self, device):  # pragma: no cover - overridden
        raise NotImplementedError


class TensorPairs(PairSource):
    """Row ``i`` of ``a`` and row ``i`` of ``b`` are a positive pair."""

    def __init__(self, a, b):
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
            raise MIError(f"paired features must be N x D tensors with the same N, got {tuple(a.shape)} and "
                          f"{tuple(b.shape)}")
        self.a, self.b = a.float(), b.float()

    @property
    def num_items(self):
        return self.a.shape[0]

    @property
    def dims(self):
        return self.a.shape[1], self.b.shape[1]

    def _pairs(self, anchors, generator):
        anchors = anchors.to(self.a.device)
        return self.a[anchors], self.b[anchors]

    def subset(self, items):
        items = items.to(self.a.device)
        return TensorPairs(self.a[items], self.b[items])

    def side_features(self):
        return self.a, self.b

    def to(self, device):
        return TensorPairs(self.a.to(device), self.b.to(device))


class ClassPairs(PairSource):
    """Same-class sampling: ``features`` N x D (one row per image), ``classes`` N class ids. A pair is an
    anchor image and another image of its class, drawn uniformly; every class needs two images."""

    def __init__(self, features, classes):
        classes = torch.as_tensor(classes, dtype=torch.long).flatten()
        if features.ndim != 2 or features.shape[0] != classes.shape[0]:
            raise MIError(f"features ({tuple(features.shape)}) and class ids ({tuple(classes.shape)}) must have "
                          "one row per image")
        self.features = features.float()
        self.classes = classes
        order = torch.argsort(classes, stable=True)
        sorted_classes = classes[order]
        _, counts = torch.unique_consecutive(sorted_classes, return_counts=True)
        if counts.numel() == 0 or int(counts.min()) < 2:
            raise MIError("same-class pairing needs at least two images of every class")
        starts = torch.cumsum(counts, 0) - counts
        group = torch.repeat_interleave(torch.arange(len(counts)), counts)
        self._order = order                            # item ids sorted by class
        self._start = starts[group]                    # per sorted position: where its class starts
        self._count = counts[group]                    # per sorted position: its class size
        self._rank = torch.empty_like(order)           # per item: its position in the sorted order
        self._rank[order] = torch.arange(len(order))

    @property
    def num_items(self):
        return self.features.shape[0]

    @property
    def dims(self):
        d = self.features.shape[1]
        return d, d

    def groups(self):
        return self.classes

    def partners(self, anchors, generator):
        """Another item of the same class for each anchor (uniform, never the anchor itself)."""
        pos = self._rank[anchors]
        start, count = self._start[pos], self._count[pos]
        r = (torch.rand(len(anchors), generator=generator) * (count - 1).float()).long()
        r = torch.minimum(r, count - 2)
        own = pos - start
        r = r + (r >= own).long()                      # skip the anchor's own slot
        return self._order[start + r]

    def _pairs(self, anchors, generator):
        partners = self.partners(anchors, generator)
        dev = self.features.device
        return self.features[anchors.to(dev)], self.features[partners.to(dev)]

    def subset(self, items):
        return ClassPairs(self.features[items.to(self.features.device)], self.classes[items])

    def side_features(self):
        return self.features, self.features

    def to(self, device):
        return ClassPairs(self.features.to(device), self.classes)


class ViewPairs(PairSource):
    """Augmentation pairing: ``views`` N x V x D, the features of V augmented views of each of N images. A
    pair is two different views of one image."""

    def __init__(self, views):
        if views.ndim != 3 or views.shape[1] < 2:
            raise MIError(f"view features must be N x V x D with V >= 2 views per image, got {tuple(views.shape)}")
        self.views = views.float()

    @property
    def num_items(self):
        return self.views.shape[0]

    @property
    def dims(self):
        d = self.views.shape[2]
        return d, d

    def _pairs(self, anchors, generator):
        v = self.views.shape[1]
        first = torch.randint(v, (len(anchors),), generator=generator)
        second = (first + torch.randint(1, v, (len(anchors),), generator=generator)) % v
        dev = self.views.device
        anchors = anchors.to(dev)
        return self.views[anchors, first.to(dev)], self.views[anchors, second.to(dev)]

    def subset(self, items):
        return ViewPairs(self.views[items.to(self.views.device)])

    def side_features(self):
        flat = self.views.reshape(-1, self.views.shape[2])
        return flat, flat

    def to(self, device):
        return ViewPairs(self.views.to(device))

