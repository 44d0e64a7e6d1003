"""The post-training MI estimate per 1,000 images: encoding the images, then training and reading the critic.

:func:`pretrain.evaluation.mi.encoder.estimate_encoder_mi` (what ``tools/estimate_mi.py`` runs) on synthetic
CDP images (``transfer.data.synthetic``) with a ResNet-18 (random weights, a torchvision state dict), one
seed, its default critic protocol (K_Est 256, 1000 steps, 50 held-out batches), in a fresh process. Its
own timing splits the cost: ``features`` (decode, views, the frozen encoder: grows with images x views)
and ``critic`` (training, validation and the held-out reading: grows with the steps, not the images).
Two pairings: ``class:color`` (same-class pairs, one view per image; 4 classes, so that a few images are
enough) and ``simclr`` (4 augmented views per image).
"""
import os
import shutil
import tempfile

from transfer.bench.isolated import run_isolated

__all__ = ["bench_mi", "HEADERS"]

HEADERS = ("images", "pairing", "image px", "critic steps", "features s", "critic s", "total s", "s per 1k images",
           "added MB")
_IMPORTS = ("torch", "torchvision", "pretrain.evaluation.mi.encoder")


def _weights(path):
    import torch
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def _estimate(weights, data, pairing, image_size, iters, threads):
    import torch

    from pretrain.evaluation.mi.encoder import estimate_encoder_mi

    if threads:
        torch.set_num_threads(threads)
    report = estimate_encoder_mi(weights, data, pairing, seeds=[0], iters=iters, image_size=image_size,
                                 num_workers=0, device="cpu", views_per_image=4)
    return report["timing"]


def bench_mi(sizes, image_size=224, iters=1000, threads=0, work_dir=None, log=None):
    """Rows of :data:`HEADERS`: for each number of images in ``sizes`` and each pairing."""
    from transfer.data.synthetic import write_synthetic

    tmp = tempfile.mkdtemp(prefix="bench_scale_mi_", dir=work_dir)
    rows = []
    try:
        weights = _weights(os.path.join(tmp, "resnet18.pth"))
        for n in sizes:
            root = os.path.join(tmp, f"cdp{n}")
            written = write_synthetic(root, kinds=("cdp",), num_images=n, seed=0)
            images = written["cdp"]["train"]["images"]
            data = os.path.join(root, "cdp", "train")
            for pairing in ("class:color", "simclr"):
                if log:
                    log(f"MI: {images} images, {pairing} ...")
                m = run_isolated(_estimate, weights, data, pairing, image_size, iters, threads, imports=_IMPORTS)
                if m.error:
                    rows.append((images, pairing, image_size, iters, "failed", "-", "-", m.error[:80], "-"))
                    continue
                timing = m.result
                total = timing["features_s"] + timing["estimate_s"]
                rows.append((images, pairing, image_size, iters, f"{timing['features_s']:.1f}",
                             f"{timing['estimate_s']:.1f}", f"{total:.1f}", f"{1000 * total / images:.1f}",
                             f"{m.added_mb:.0f}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows
