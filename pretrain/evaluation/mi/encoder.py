"""The MI estimate of a frozen encoder: a weights file and an image folder in, the ``mi.json`` report out.

Pairings (:mod:`pretrain.evaluation.mi.pairing`): with same-class sampling and M equiprobable classes a
perfect encoder reaches ``E[log(K_Est / (1 + N))]``, ``N ~ Bin(K_Est - 1, 1/M)``, slightly below
``H(C) = log M`` (:func:`pretrain.evaluation.mi.bound.perfect_encoder_bound` computes it for the actual class
frequencies; at K_Est 256: 1.99, 3.96 and 5.81 bits for H(C) = 2, 4 and 6 bits). It is also the most *any*
encoder can show at that K_Est when the label is a function of the image: a critic on features is a critic
on images, and on images the optimal critic scores ``log(1[same class] / p(c))``. As the true MI of
same-class pairs is at most ``H(C)`` (Proposition III.1) and ``I_hat`` is below the true MI, an estimate at
``H(C)`` means the true MI is ``H(C)`` (Theorem III.1); at finite ``K_Est`` an encoder that keeps all class
information sits at the perfect-encoder bound instead, and ``fraction_of_perfect`` in the report says how
close. The report's fields are described in docs/artifacts.md.

K_Est is at most the number of test items: a larger batch would draw the same few held-out items over and
over, and the estimate could not approach the ceiling ``log K_Est`` it would record (with N distinct
items the data, not the batch, caps it). A larger ``k_est`` is clamped to the test items, before any
image is encoded, with a warning; the report records the K_Est used (``k_est``, its ceiling) and the one
asked for (``k_est_requested``).
"""
import math
import os
import time

import torch

from pretrain.common.runs import backbone_label
from pretrain.evaluation.features import ViewedImages, extract_features, view_loader
from pretrain.evaluation.mi.bound import NATS_PER_BIT, NEAR_CEILING, MIError, k_for_class_entropy, perfect_encoder_bound
from pretrain.evaluation.mi.estimate import check_arguments, estimate_mi, seed_list
from pretrain.evaluation.mi.pairing import build_pairs, parse_pairing, select_classes
from pretrain.evaluation.mi.pairs import held_out_count

__all__ = ["encode_images", "estimate_encoder_mi"]


@torch.no_grad()
def encode_images(encoder, dataset, pipeline, *, num_views=1, batch_size=64, num_workers=0, seed=0):
    """Features of every image of ``dataset`` (anything with ``load(i)`` and ``len``): N x D for one view,
    N x V x D for ``num_views`` views, seeded per image. ``pipeline`` is a
    :class:`pretrain.data.views.ViewPipeline` whose ``num_views`` matches."""
    images = ViewedImages(dataset, pipeline, seed=seed, num_views=num_views)
    loader = view_loader(images, batch_size, num_workers, encoder.device)
    features, _ = extract_features(encoder, loader, encoder.device)
    return features


def _view_pipeline(views, image_size, num_views):
    """A view pipeline by registered name or from a pretraining config YAML (its INPUT.VIEWS and INPUT.*)."""
    from pretrain.config import ConfigError, load_config
    from pretrain.data.views import VIEWS, build_views

    if views.endswith((".yaml", ".yml")) or os.path.isfile(views):
        try:
            cfg = load_config(views)
        except ConfigError as e:
            raise MIError(f"--views {views}: {e}") from None
        name = cfg.INPUT.VIEWS
    else:
        from pretrain.config import get_cfg

        cfg, name = get_cfg(), views
    if name not in VIEWS:
        raise MIError(f"unknown view pipeline {name!r}; registered: {', '.join(sorted(VIEWS))} "
                      "(or a pretraining config .yaml)")
    cfg.INPUT.SIZE = int(image_size) if image_size else cfg.INPUT.SIZE
    cfg.INPUT.NUM_VIEWS = int(num_views)
    cfg.JIGSAW.ENABLED = False
    return build_views(cfg, name), name, cfg.INPUT.SIZE


def estimate_encoder_mi(weights, data, pairing, *, k_est=256, iters=1000, seeds=(0, 1, 2), form="infonce",
                        views="moco_v2", views_per_image=4, image_size=224, holdout=0.25, eval_batches=50,
                        max_images=0, batch_size=64, num_workers=4, device="auto", fmt="auto",
                        trust_pickle=False, backbone_name=None, log_every=0):
    """The whole post-training estimate for a weights file and an image folder; returns the mi.json dict.

    ``data``: a folder with ``labels.csv`` or an ImageFolder (:class:`pretrain.data.labeled.LabeledImages`).
    ``pairing``: a spec for :func:`parse_pairing`. Class pairing encodes each image once through the
    ``eval`` views (resize, centre crop to ``image_size``); ``simclr`` pairing encodes ``views_per_image``
    augmented views per image from ``views`` (a registered pipeline name or a pretraining config .yaml),
    seeded per image, once for all seeds. ``max_images`` > 0 uses a fixed random subset of the images.
    Raises :class:`MIError` (and the loaders' one-line errors: ``FrozenEncoderError``, ``LabeledDataError``).
    """
    from pretrain.evaluation.frozen import load_frozen_encoder
    from pretrain.data.labeled import LabeledImages

    start = time.perf_counter()
    check_arguments(k_est, iters, holdout, eval_batches, form)
    seeds = seed_list(seeds)
    if isinstance(views_per_image, bool) or not isinstance(views_per_image, int) or views_per_image < 2:
        raise MIError(f"views_per_image must be an integer >= 2, got {views_per_image!r}")
    # validate everything cheap before loading weights or decoding images
    dataset = LabeledImages(data)
    spec = parse_pairing(pairing, dataset.attributes)
    if spec.kind == "simclr":
        pipeline, views_name, size = _view_pipeline(views, image_size, views_per_image)
        num_views = views_per_image
    else:
        pipeline, views_name, size = _view_pipeline("eval", image_size, 1)
        num_views = 1
    if max_images and max_images < len(dataset):
        keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:max_images]
        dataset = _Subset(dataset, torch.sort(keep).values)
    groups = None
    if spec.kind == "class":  # the classes that can be paired; only their images are encoded
        keep, groups, _ = select_classes(dataset, spec)
        if not bool(keep.all()):
            dataset = _Subset(dataset, torch.nonzero(keep).flatten())
    k_est, k_requested, clamped = _usable_k_est(k_est, len(dataset), holdout, groups)
    encoder = load_frozen_encoder(weights, fmt=fmt, trust_pickle=trust_pickle, device=device)
    loaded = time.perf_counter()
    features = encode_images(encoder, dataset, pipeline, num_views=num_views, batch_size=batch_size,
                             num_workers=num_workers)
    encoded = time.perf_counter()
    source, info = build_pairs(dataset, spec, features)
    result = estimate_mi(source, k_est=k_est, iters=iters, seeds=seeds, form=form, holdout=holdout,
                         eval_batches=eval_batches, device=encoder.device, log_every=log_every)
    done = time.perf_counter()

    report = {"weights": os.fspath(weights),
              "backbone": backbone_label(backbone_name, weights),
              "encoder": encoder.description, "feature_dim": encoder.feature_dim,
              "data": os.fspath(data), "attributes": list(dataset.attributes)}
    report.update({k: v for k, v in info.items() if k not in ("warnings", "class_probs")})
    report.update(result)
    report["image_size"] = size
    if spec.kind == "simclr":
        report.update(views=views_name, views_per_image=views_per_image)
    else:
        report["views"] = "eval"
    report["k_est_requested"] = k_requested
    warnings = list(info["warnings"]) + ([clamped] if clamped else []) + list(result["warnings"])
    if spec.kind == "class":
        h_bits = info["class_entropy_bits"]
        perfect = perfect_encoder_bound(info["class_probs"], k_est, form)
        report["perfect_encoder_nats"] = perfect
        report["perfect_encoder_bits"] = perfect / NATS_PER_BIT
        report["fraction_of_perfect"] = result["mi_nats"] / perfect if perfect > 0 else None
        h_nats = h_bits * NATS_PER_BIT
        if perfect < NEAR_CEILING * h_nats:
            needed = k_for_class_entropy(info["class_probs"], form)
            more = f"; K_Est >= {needed} would allow 95% of H(C)" if needed else ""
            warnings.append(f"with K_Est = {k_est} even a perfect encoder reaches only {perfect / NATS_PER_BIT:.2f} "
                            f"bits of H(C) = {h_bits:.2f} bits (same-class negatives in the batch, the ceiling){more}")
        if result["mi_nats"] > h_nats + 2 * max(result["mi_nats_std"], 0.01):
            warnings.append(f"the estimate ({result['mi_bits']:.2f} bits) exceeds H(C) = {h_bits:.2f} bits, which "
                            "a same-class pairing cannot do: are images duplicated across classes or splits?")
    report["warnings"] = warnings
    report["timing"] = {"load_s": round(loaded - start, 3), "features_s": round(encoded - loaded, 3),
                        "estimate_s": round(done - encoded, 3), "total_s": round(done - start, 3)}
    report["device"] = str(encoder.device)
    return report


def _usable_k_est(k_est, num_images, holdout, groups=None):
    """``(k_est, requested, warning)``: ``k_est`` clamped to the test items the split of ``num_images``
    leaves (``groups``: class ids, for a stratified split), with the warning saying so (None when not)."""
    available = held_out_count(num_images, holdout, groups)
    if available < 2:
        raise MIError(f"{num_images} images leave {available} held-out test item(s) (--holdout {holdout}): too few "
                      "to estimate; use more images")
    if k_est <= available:
        return k_est, k_est, None
    return available, k_est, (
        f"K_Est {k_est} is more than the {available} held-out test items ({num_images} images, --holdout "
        f"{holdout}): clamped to K_Est {available}, ceiling log {available} = {math.log(available):.3f} nats "
        f"(a larger batch would only repeat the same items); use more images for a larger K_Est")


class _Subset:
    """A fixed subset of a labelled dataset (``load``, ``labels``, ``attributes``, ``len``)."""

    def __init__(self, dataset, items):
        if isinstance(dataset, _Subset):  # a subset of a subset: index the original
            dataset, items = dataset.dataset, dataset.items[items]
        self.dataset, self.items = dataset, items
        self.attributes = dataset.attributes
        self.classes = dataset.classes
        self.labels = dataset.labels[items]

    def load(self, i):
        return self.dataset.load(int(self.items[i]))

    def __len__(self):
        return len(self.items)

