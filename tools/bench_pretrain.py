#!/usr/bin/env python
"""Images/s of MoCo pretraining: the full training step and the data pipeline per worker, ours vs lightly.

    python tools/bench_pretrain.py [--arch resnet18] [--size 64] [--batch 256] [--queue 65536] [--device cpu]
                                   [--data ROOT/train] [--data-size 224] [--images 64] [--rounds 3]
                                   [--no-lightly] [--skip-step] [--skip-data]
                                   [--loop] [--workers 1] [--loop-iters 30]

Tables: the training step alone, the data pipeline per loader worker, and with ``--loop`` whole training
processes (loader workers, decode, views and step together; the project's trainer vs lightly's documented
loop, each in a fresh process, at --arch/--size/--batch/--queue on the --data folder). Without ``--data``,
a synthetic ImageNet-style folder (transfer.data.synthetic, ImageNet-sized JPEGs) is written to a temporary
directory. See pretrain/bench.py for what is timed.
"""
import argparse
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pretrain.bench import bench_data, bench_loop, bench_step, format_table, lightly_available  # noqa: E402
from pretrain.training.solver import cpu_has_native_bf16  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bench_pretrain", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=64, help="input size of the training step")
    parser.add_argument("--batch", type=int, default=256, help="batch of the step (the recipes' 256 by default)")
    parser.add_argument("--queue", type=int, default=65536, help="MoCo queue length K")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=2, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best is reported")
    parser.add_argument("--data", default="", help="an ImageFolder (class folders) for the data table")
    parser.add_argument("--data-size", type=int, default=224, help="view size of the data table")
    parser.add_argument("--images", type=int, default=64, help="images per data-pipeline round")
    parser.add_argument("--no-lightly", action="store_true", help="skip the lightly comparison")
    parser.add_argument("--lightly-bf16", action="store_true", help="also time lightly with bf16 + channels_last")
    parser.add_argument("--loop", action="store_true", help="also time whole training processes")
    parser.add_argument("--workers", type=int, default=1, help="loader workers of the --loop table")
    parser.add_argument("--loop-iters", type=int, default=30, help="timed iterations of --loop (after 10)")
    parser.add_argument("--skip-step", action="store_true")
    parser.add_argument("--skip-data", action="store_true")
    args = parser.parse_args(argv)

    version = lightly_available()
    use_lightly = not args.no_lightly and version is not None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}"
          + (f", CPU native bf16: {cpu_has_native_bf16()}" if args.device == "cpu" else ""))
    if args.no_lightly:
        print("lightly: skipped (--no-lightly)")
    elif version is None:
        print("lightly: not installed (pip install lightly, or the package's `bench` extra); comparison skipped")
    else:
        print(f"lightly {version}")

    if not args.skip_step:
        rows = bench_step(args.arch, args.size, args.batch, args.queue, args.device, iters=args.iters,
                          rounds=args.rounds, lightly=use_lightly, lightly_bf16=args.lightly_bf16)
        print(f"\nFull MoCo v2 training step: {args.arch}, {args.size} px, batch {args.batch}, queue {args.queue}")
        print(format_table(("step", "precision", "memory", "images/s", "vs lightly fp32"), rows))
        if use_lightly:
            ours = next(r for r in rows if r[0].startswith("ours default"))
            print(f"our default step / lightly's documented fp32 step: {ours[4]}")

    if args.skip_data and not args.loop:
        return 0
    root, tmp = args.data, None
    if not root:
        from transfer.data.synthetic import write_synthetic

        tmp = tempfile.TemporaryDirectory(prefix="bench_pretrain_")
        per_class = max(args.images, args.batch * (10 + args.loop_iters) if args.loop else 0) // 10 + 1
        write_synthetic(tmp.name, kinds=("imagenet",), num_images=per_class, seed=0, image_size=500)
        root = os.path.join(tmp.name, "imagenet", "train")
    if not args.skip_data:
        rows = bench_data(root, size=args.data_size, num_images=args.images, rounds=args.rounds, lightly=use_lightly)
        print(f"\nData pipeline, one worker (decode + views), {args.data_size} px views, {root}")
        print(format_table(("pipeline", "output", "images/s per worker", "vs lightly"), rows))
    if args.loop:
        rows = bench_loop(root, args.arch, args.size, args.batch, args.queue, args.workers, warmup=10,
                          iters=args.loop_iters, rounds=args.rounds, lightly=use_lightly, device=args.device)
        print(f"\nWhole training loop: {args.arch}, {args.size} px, batch {args.batch}, queue {args.queue}, "
              f"{args.workers} loader worker(s), MoCo v2 views, {root}; best of {args.rounds} fresh processes each")
        print(format_table(("loop", "images/s", "vs lightly"), rows))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
