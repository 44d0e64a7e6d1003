"""The MI-estimation command: ``tools/estimate_mi.py`` and the sweep's mi jobs run :func:`main`.

    tools/estimate_mi.py --weights W --data ROOT --pairing simclr|class[:<attr>[+<attr>...]|:all]
                         [--k-est 256] [--iters N] [--seeds S] [--out DIR] [--form infonce|ntxent]
                         [--views NAME|CONFIG.yaml] [--views-per-image V] [--image-size PX] ...

W: any checkpoint the converter reads (this project's pretraining checkpoints, Detectron2 .pkl weights,
torchvision / MoCo / PyContrast / ... state dicts). ROOT: a folder with a labels.csv (file,<attr>,..., e.g.
the CDP data from tools/make_synthetic_data.py --kinds cdp) or an ImageFolder (attribute "class").

Pairings: ``class:color`` (positives share the colour: H(C) = 2 bits on CDP), ``class:color+digit``
(4 bits), ``class:all`` (6 bits), ``class`` (all attributes); ``simclr``: two augmented views of one image
from --views. Prints one line (MI in nats and bits +- the spread over seeds, the ceiling log K_Est, H(C))
and writes mi.json (default: output/mi/<backbone>/<pairing>/mi.json). See pretrain/evaluation/mi/ for the
protocol.
"""
import argparse
import logging
import os
import re
import sys

from pretrain.common.cli import ArgumentParser, one_line_errors
from pretrain.common.fileio import write_json_atomic
from pretrain.common.runs import MI_FILE, backbone_label
from pretrain.data.labeled import LabeledDataError
from pretrain.evaluation.frozen import FrozenEncoderError
from pretrain.evaluation.mi.bound import FORMS, NATS_PER_BIT, MIError
from pretrain.evaluation.mi.encoder import estimate_encoder_mi

__all__ = ["PROG", "parse_args", "summary", "main"]

PROG = "estimate_mi"
DESCRIPTION = ("Post-training mutual-information estimate of a frozen backbone (Lee et al.): a fresh critic, "
               "a large batch.")


def _seeds(text):
    """``3`` -> seeds 0, 1, 2; ``4,7`` (a comma anywhere) -> exactly those."""
    text = str(text).strip()
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds: expected a count (3) or a list (0,4,7), got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"--seeds: expected at least one seed >= 0, got {text!r}")
    return seeds


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value
    return parse


def parse_args(argv=None):
    p = ArgumentParser(prog=PROG, description=DESCRIPTION, epilog="\n".join(__doc__.splitlines()[6:]))
    p.add_argument("--weights", required=True, help="checkpoint or weights file of the backbone")
    p.add_argument("--data", required=True, help="folder with labels.csv, or an ImageFolder")
    p.add_argument("--pairing", required=True, help="simclr, class, class:all or class:<attr>[+<attr>...]")
    p.add_argument("--k-est", type=_positive(int), default=256, help="estimation batch K_Est (default: 256)")
    p.add_argument("--iters", type=_positive(int), default=1000, help="critic training steps per seed (default: 1000)")
    p.add_argument("--seeds", type=_seeds, default=[0, 1, 2],
                   help="number of seeds (3 = seeds 0,1,2; the default) or a comma-separated list")
    p.add_argument("--out", default=None, help="output folder for mi.json (default: output/mi/<backbone>/<pairing>)")
    p.add_argument("--backbone-name", default=None, help="name recorded in mi.json (default: the weights file's stem)")
    p.add_argument("--form", choices=FORMS, default="infonce",
                   help="infonce: K_Est - 1 negatives per anchor, ceiling log K_Est (default); ntxent: Lee et al.'s "
                        "Eq. (2), 2 K_Est - 2 negatives, ceiling log(2 K_Est - 1)")
    p.add_argument("--views", default="moco_v2",
                   help="simclr pairing: a registered view pipeline (moco_v2, moco_v1, infomin) or a pretraining "
                        "config .yaml whose INPUT.* define it (default: moco_v2, SimCLR's augmentations)")
    p.add_argument("--views-per-image", type=_positive(int), default=4,
                   help="simclr pairing: augmented views encoded per image, once for all seeds (default: 4)")
    p.add_argument("--image-size", type=_positive(int), default=224,
                   help="side of the encoder's input in pixels (default: 224)")
    p.add_argument("--holdout", type=float, default=0.25,
                   help="fraction of the images kept for testing the critic (the estimate), and of the rest "
                        "for validating it (early stopping) (default: 0.25)")
    p.add_argument("--eval-batches", type=_positive(int), default=50,
                   help="held-out batches of K_Est pairs averaged per seed (default: 50)")
    p.add_argument("--max-images", type=int, default=0, help="use a fixed random subset of this many images (0: all)")
    p.add_argument("--batch-size", type=_positive(int), default=64, help="images per encoder forward (default: 64)")
    p.add_argument("--workers", type=int, default=4, help="image loading processes (default: 4)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--format", default="auto", help="checkpoint layout (see tools/convert_backbone.py; default: auto)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow full unpickling of the weights (can run code from the file; trusted files only)")
    p.add_argument("--log-every", type=int, default=0,
                   help="log the training and validation bounds about every N steps (0: never)")
    return p.parse_args(argv)


def _slug(text):
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "-", text).strip("-") or "x"


def summary(report):
    """The one-line result."""
    nats, std = report["mi_nats"], report["mi_nats_std"]
    asked = report.get("k_est_requested", report["k_est"])
    k_est = f"{report['k_est']}" + (f", clamped from {asked}" if asked != report["k_est"] else "")
    line = (f"MI {report['backbone']} {report['pairing']} (K_Est {k_est}, {len(report['seeds'])} seeds): "
            f"{nats:.3f} +- {std:.3f} nats = {nats / NATS_PER_BIT:.3f} +- {std / NATS_PER_BIT:.3f} bits; "
            f"ceiling {report['ceiling_nats']:.3f} nats = {report['ceiling_bits']:.2f} bits")
    if "class_entropy_bits" in report:
        line += (f"; H(C) {report['class_entropy_bits']:.3f} bits ({report['num_classes']} classes), "
                 f"at most {report['perfect_encoder_bits']:.3f} bits at this K_Est (perfect encoder)")
    return line


def _os_message(e):
    where = f"{e.filename}: " if getattr(e, "filename", None) else ""
    return f"{where}{e.strerror or e}"


def main(argv=None):
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns 0, or exits with status 2 and one
    line on stderr for a mistake the user can fix."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.log_every else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    backbone = backbone_label(args.backbone_name, args.weights)
    with one_line_errors(PROG, MIError, FrozenEncoderError, LabeledDataError):
        if not os.path.isfile(args.weights):
            raise MIError(f"{args.weights}: no such weights file")
        if args.max_images < 0 or args.workers < 0:
            raise MIError("--max-images and --workers must be >= 0")
        out = args.out or os.path.join("output", "mi", _slug(backbone),
                                       _slug(args.pairing.strip().replace(":", "-")))
        if os.path.exists(out) and not os.path.isdir(out):
            raise MIError(f"--out {out} exists and is not a folder")
        try:
            report = estimate_encoder_mi(
                args.weights, args.data, args.pairing, k_est=args.k_est, iters=args.iters, seeds=args.seeds,
                form=args.form, views=args.views, views_per_image=args.views_per_image, image_size=args.image_size,
                holdout=args.holdout, eval_batches=args.eval_batches, max_images=args.max_images,
                batch_size=args.batch_size, num_workers=args.workers, device=args.device, fmt=args.format,
                trust_pickle=args.trust_pickle, backbone_name=backbone, log_every=args.log_every)
            path = write_json_atomic(os.path.join(out, MI_FILE), report)
        except OSError as e:
            raise MIError(_os_message(e)) from None
    print(summary(report))
    for warning in report["warnings"]:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    print(f"wrote {path}")
    return 0
