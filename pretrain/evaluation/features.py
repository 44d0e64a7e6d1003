"""Frozen features: images through view pipelines and an encoder, batch after batch.

The one extractor of the project's evaluations: the kNN monitor of pretraining
(:mod:`pretrain.training.knn`), linear evaluation (:mod:`pretrain.evaluation.linear`) and MI estimation
(:mod:`pretrain.evaluation.mi`) all run :func:`extract_features`. :class:`ViewedImages` and
:func:`view_loader` give it the images of a labelled dataset, each view seeded by (seed, epoch, image) so
that a rerun sees the same crops; :func:`topk_accuracy` scores the class predictions made from features.
"""
import torch

__all__ = ["ViewedImages", "view_loader", "extract_features", "topk_accuracy"]


class ViewedImages(torch.utils.data.Dataset):
    """The images of ``images`` (anything with ``load(i)`` and ``len``) through the view pipeline ``views``.

    An item is an index ``i`` or a pair ``(i, epoch)`` (epoch 0 when not given); the views of image ``i``
    at an epoch are seeded by ``(seed, epoch, i)``. It returns ``(view, target)``: ``view`` a uint8 tensor
    3 x S x S, or V x 3 x S x S with ``num_views`` V > 1 (the pipeline must make that many); ``target``
    ``targets[i]``, or ``i`` when ``targets`` is None.
    """

    def __init__(self, images, views, seed=0, targets=None, num_views=1):
        self.images, self.views, self.seed = images, views, int(seed)
        self.targets, self.num_views = targets, int(num_views)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, item):
        from pretrain.data.views import sample_seed

        index, epoch = item if isinstance(item, tuple) else (item, 0)
        out = self.views(self.images.load(index), sample_seed(self.seed, epoch, index))
        if self.num_views == 1:
            view = out["view1"]
        else:
            view = torch.stack([out[f"view{v + 1}"] for v in range(self.num_views)])
        return view, index if self.targets is None else self.targets[index]


def _one_thread(_):
    torch.set_num_threads(1)


def view_loader(dataset, batch_size, num_workers=0, device=None, order=None, epoch=0):
    """Batches of ``(views, targets)`` of a :class:`ViewedImages` in ``order`` (default: every image in
    turn) at ``epoch``; workers use one torch thread each, memory is pinned for a CUDA ``device``."""
    order = range(len(dataset)) if order is None else order
    pin = device is not None and torch.device(device).type == "cuda"
    kwargs = {"worker_init_fn": _one_thread} if num_workers > 0 else {}
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=[(int(i), epoch) for i in order],
                                       num_workers=num_workers, pin_memory=pin, drop_last=False, **kwargs)


@torch.no_grad()
def extract_features(encode, batches, device, *, to_cpu=True):
    """``(features, targets)`` of every ``(images, targets)`` batch through ``encode``, in order.

    ``images`` N x 3 x H x W give features N x D; N x V x 3 x H x W (V views per item) give N x V x D.
    The images go to ``device`` first; the features stay there unless ``to_cpu``, the targets come back
    as they are. No batch at all gives empty tensors (0 x 1 features).
    """
    device = torch.device(device)
    features, targets = [], []
    for images, target in batches:
        images = images.to(device, non_blocking=True)
        if images.ndim == 5:
            n, v = images.shape[:2]
            feats = encode(images.flatten(0, 1)).view(n, v, -1)
        else:
            feats = encode(images)
        features.append(feats.cpu() if to_cpu else feats)
        targets.append(torch.as_tensor(target))
    if not features:
        where = torch.device("cpu") if to_cpu else device
        return torch.zeros(0, 1, device=where), torch.zeros(0, dtype=torch.long)
    return torch.cat(features), torch.cat(targets)


def topk_accuracy(scores, targets, topk=(1, 5)):
    """Top-k accuracies (percent) of class ``scores`` (N x C) against ``targets`` (N); k is capped at C
    (with fewer than 5 classes top-5 counts every class). No target at all gives 0."""
    out = {}
    for k in topk:
        pred = scores.topk(min(k, scores.shape[1]), dim=1).indices
        hit = (pred == targets[:, None]).any(dim=1)
        out[f"top{k}"] = hit.double().mean().item() * 100 if len(targets) else 0.0
    return out
