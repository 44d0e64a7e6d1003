"""Check that a transfer run gives the same losses and weights on any number of processes.

    python tools/check_invariance.py CONFIG --num-gpus 1,2,8 [--iterations 5] [--ims-per-batch B]
        [--precise-bn-iters K] [--strict] [--tolerance T] [KEY VALUE ...]

For each process count this trains ``--iterations`` iterations of ``CONFIG`` (the same overrides, the
same ``SEED``, the same global batch ``B``: the config's batch on its reference hardware unless given,
with ``SOLVER.REFERENCE_WORLD_SIZE 0`` so that no linear rescaling applies), without evaluation or
checkpoints, and prints the total loss of every iteration side by side, then for each count the largest
difference from the first count: in any loss, in the weights after training (parameters and BN
statistics, also as a fraction of the largest change training made) and, with ``--precise-bn-iters``,
in the BN statistics after precise BN. On the CPU ``--num-gpus N`` starts N gloo processes. The exit
status is 1 when a difference exceeds ``--tolerance`` (relative), 2 for a usage error.

What makes the runs equal (:mod:`transfer.data.loader`, :mod:`transfer.training.global_batch`): every
process receives its share of the same global batch, augmented per image; images are padded to the
global batch's size; the RPN and ROI sampling of an image is seeded by the image; SyncBN computes the
statistics of the global batch. What does not (printed with the numbers when it is the largest
difference): losses that Detectron2 normalises by a count of the process's own samples (mask: its
foreground ROIs; keypoints: its visible keypoints; box head: its sampled ROIs, equal when every image
fills ``ROI_HEADS.BATCH_SIZE_PER_IMAGE``), and on GPUs the arithmetic (TF32 convolutions, cuDNN's
choice of algorithm per batch shape; ``--strict`` turns TF32 and benchmarking off).
"""
import argparse
import contextlib
import logging
import os
import tempfile

import torch
from detectron2.engine import hooks
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from torch.nn.parallel import DistributedDataParallel

from pretrain.common import distributed as du
from pretrain.common.cli import ArgumentParser, UserError, one_line_errors
from pretrain.common.safe_load import read_checkpoint
from transfer.data.datasets import DatasetError, register_from_config
from transfer.training.config import ConfigError, build_config, reference_config
from transfer.training.train_net import join_process_group, prepare
from transfer.training.trainer import PreciseBNAllProcesses, TransferTrainer

__all__ = ["PROG", "LOSS_CAUSES", "global_batch_settings", "run_opts", "train_and_record", "compare_records",
           "format_report", "check_invariance", "argument_parser", "parse_args", "main"]

PROG = "check_invariance"
DEFAULT_ITERATIONS = 5
DEFAULT_TOLERANCE = 1e-4

# why a loss can differ between process counts although the global batch is the same
LOSS_CAUSES = {
    "loss_mask": "Detectron2 averages the mask loss over each process's foreground ROIs",
    "loss_keypoint": "Detectron2 normalises the keypoint loss by each process's visible keypoints",
    "loss_cls": "the box head averages over each process's sampled ROIs (equal only when every image "
                "fills ROI_HEADS.BATCH_SIZE_PER_IMAGE)",
    "loss_box_reg": "the box head divides by each process's sampled ROIs (equal only when every image "
                    "fills ROI_HEADS.BATCH_SIZE_PER_IMAGE)",
}


class UsageError(UserError):
    """A check that cannot run as asked (one line)."""


def global_batch_settings(config_file, opts, ims_per_batch=None):
    """(global batch, base LR) of the check: the config's batch and LR on its reference hardware
    (``SOLVER.REFERENCE_WORLD_SIZE`` processes), the LR rescaled linearly when ``ims_per_batch`` is given."""
    try:
        reference = reference_config(config_file, opts)
    except (AssertionError, KeyError, ValueError) as e:  # ConfigError passes; yacs' own key and type errors
        if isinstance(e, ConfigError):
            raise
        raise UsageError(f"bad overrides: {e}") from None
    batch, lr = reference.SOLVER.IMS_PER_BATCH, reference.SOLVER.BASE_LR
    if ims_per_batch:
        lr, batch = lr * ims_per_batch / batch, ims_per_batch
    return batch, lr


def run_opts(opts, batch, lr, iterations, output_dir, precise_bn_iters=0):
    """The overrides of one run of the check: fixed global batch and LR, no rescaling, evaluation or
    checkpoints; precise BN only when asked."""
    return [*opts, "SOLVER.REFERENCE_WORLD_SIZE", "0", "SOLVER.IMS_PER_BATCH", str(batch),
            "SOLVER.BASE_LR", repr(float(lr)), "SOLVER.MAX_ITER", str(iterations),
            "SOLVER.CHECKPOINT_PERIOD", str(10 * iterations + 1000), "TEST.EVAL_PERIOD", "0",
            "TEST.PRECISE_BN.ENABLED", str(precise_bn_iters > 0),
            "TEST.PRECISE_BN.NUM_ITER", str(max(1, precise_bn_iters)), "OUTPUT_DIR", output_dir]


def _unwrapped(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


def _state(model):
    return {k: v.detach().cpu().clone() for k, v in _unwrapped(model).state_dict().items()}


class LossRecorder(hooks.HookBase):
    """Keeps, on the main process, every iteration's losses (means over processes, as Detectron2 logs
    them) and each process's own losses and foreground ROIs per image, and the weights before training,
    after the last step and after the last hook (precise BN)."""

    def __init__(self):
        self.losses, self.per_process, self.initial, self.trained, self.final = [], [], None, None, None

    def before_train(self):
        if comm.is_main_process():
            self.initial = _state(self.trainer.model)

    def after_step(self):
        iteration = self.trainer.iter
        latest = self.trainer.storage.latest()
        fg = latest.get("roi_head/num_fg_samples")
        mine = {"losses": dict(self.trainer.process_losses),
                "fg_per_image": float(fg[0]) if fg is not None and fg[1] == iteration else None}
        gathered = comm.all_gather(mine)
        if not comm.is_main_process():
            return
        self.per_process.append(gathered)
        self.losses.append({name: float(value) for name, (value, it) in latest.items()
                            if it == iteration and (name == "total_loss" or name.startswith("loss"))})
        if iteration + 1 == self.trainer.max_iter:
            self.trained = _state(self.trainer.model)

    def after_train(self):
        if comm.is_main_process():
            self.final = _state(self.trainer.model)


class _CheckTrainer(TransferTrainer):
    """The transfer trainer with its training hooks only (LR schedule, precise BN) and a :class:`LossRecorder`,
    which also sees this process's own losses of each step (``process_losses``)."""

    def __init__(self, cfg):
        self.process_losses = {}
        super().__init__(cfg)
        write = self._trainer._write_metrics

        def write_metrics(loss_dict, *args, **kwargs):
            self.process_losses = {k: float(v.detach()) for k, v in loss_dict.items()}
            return write(loss_dict, *args, **kwargs)

        self._trainer._write_metrics = write_metrics

    def build_writers(self):
        return []

    def build_hooks(self):
        kept = [h for h in super().build_hooks()
                if isinstance(h, (hooks.IterationTimer, hooks.LRScheduler, PreciseBNAllProcesses))]
        self.recorder = LossRecorder()
        position = next((i for i, h in enumerate(kept) if isinstance(h, PreciseBNAllProcesses)), len(kept))
        kept.insert(position, self.recorder)
        return kept


@contextlib.contextmanager
def _quiet_detectron2():
    """Detectron2's INFO lines off (warnings still print); the logger as it was afterwards."""
    log = logging.getLogger("detectron2")
    saved = log.level, log.propagate, list(log.handlers)
    # enabled for INFO, so that the trainer does not set up its own console logger, but going nowhere
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in saved[2]:
        log.removeHandler(handler)
    try:
        yield
    finally:
        log.setLevel(saved[0])
        log.propagate = saved[1]
        for handler in saved[2]:
            log.addHandler(handler)


def _strict_numerics():
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def train_and_record(config_file, opts, record_path, strict=False):
    """In every process of a job: train ``config_file`` with ``opts``; the main process saves the
    record (losses per iteration, weights before and after training and after precise BN)."""
    if strict:
        _strict_numerics()
    cfg = build_config(config_file, opts, world_size=comm.get_world_size())
    register_from_config(cfg.TRANSFER.COCO_DATASETS)
    seed_all_rng(cfg.SEED + comm.get_rank())  # as Detectron2's default_setup seeds each process
    with _quiet_detectron2():
        trainer = _CheckTrainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
    if comm.is_main_process():
        recorder = trainer.recorder
        torch.save({"world_size": comm.get_world_size(), "losses": recorder.losses,
                    "per_process": recorder.per_process, "initial": recorder.initial,
                    "trained": recorder.trained,
                    "precise_bn": recorder.final if cfg.TEST.PRECISE_BN.ENABLED else None}, record_path)
    comm.synchronize()


def _process(info, config_file, opts, record_path, strict):
    join_process_group(info)
    train_and_record(config_file, opts, record_path, strict)


def _is_bn_statistic(name):
    return name.endswith(("running_mean", "running_var", "num_batches_tracked"))


def _largest_difference(a, b, names):
    """(max |a - b|, its tensor's name, max |a - b| / max |a|) over the floating tensors ``names``."""
    best = (0.0, None, 0.0)
    for name in names:
        x, y = a[name], b[name]
        if not x.is_floating_point() or x.numel() == 0:
            continue
        diff = float((x.double() - y.double()).abs().max())
        if diff > best[0]:
            best = (diff, name, diff / max(float(x.double().abs().max()), 1e-30))
    return best


def _largest_update(initial, trained):
    names = [n for n in initial if not _is_bn_statistic(n) and initial[n].is_floating_point() and initial[n].numel()]
    return max((float((trained[n].double() - initial[n].double()).abs().max()) for n in names), default=0.0)


def compare_records(base, other):
    """Differences of ``other`` from ``base`` (two records of :func:`train_and_record`)."""
    if len(base["losses"]) != len(other["losses"]):
        raise ValueError("the runs recorded different numbers of iterations")
    loss = (0.0, None, None, 0.0)  # (abs, name, iteration, relative)
    for iteration, (x, y) in enumerate(zip(base["losses"], other["losses"])):
        for name in sorted(set(x) & set(y)):
            diff = abs(x[name] - y[name])
            if diff > loss[0]:
                loss = (diff, name, iteration, diff / max(abs(x[name]), 1e-30))
    if set(base["trained"]) != set(other["trained"]):
        raise ValueError("the runs' models have different tensors")
    params = [n for n in base["trained"] if not _is_bn_statistic(n)]
    stats = [n for n in base["trained"] if _is_bn_statistic(n)]
    update = _largest_update(base["initial"], base["trained"])
    out = {"loss": loss, "parameters": _largest_difference(base["trained"], other["trained"], params),
           "bn_statistics": _largest_difference(base["trained"], other["trained"], stats), "update": update,
           "precise_bn": None}
    if base["precise_bn"] is not None and other["precise_bn"] is not None:
        out["precise_bn"] = _largest_difference(base["precise_bn"], other["precise_bn"], stats)
    return out


def _plural(n):
    return f"{n} process" + ("es" if n != 1 else "")


def format_report(header, counts, records, comparisons, tolerance):
    """The loss curves side by side and, per count, the largest differences from the first count."""
    lines = [header]
    names = ["total_loss"] + sorted({n for r in records for step in r["losses"] for n in step} - {"total_loss"})
    columns = [f"{_plural(n)}" for n in counts]
    lines.append("total_loss per iteration:")
    lines.append("  iteration " + "".join(f"{c:>18}" for c in columns))
    for i in range(len(records[0]["losses"])):
        lines.append(f"  {i:>9} " + "".join(f"{r['losses'][i].get('total_loss', float('nan')):>18.9g}" for r in records))
    lines.append(f"losses compared: {', '.join(names)}")
    lines.append(f"largest differences from {_plural(counts[0])}:")
    for n, cmp in zip(counts[1:], comparisons):
        diff, name, it, rel = cmp["loss"]
        text = f"  {_plural(n)}: loss {diff:.3g} ({rel:.2g} relative"
        text += f"; {name}, iteration {it})" if name else ")"
        p_diff, p_name, p_rel = cmp["parameters"]
        text += f"; parameters {p_diff:.3g}"
        if p_name:
            share = p_diff / cmp["update"] if cmp["update"] > 0 else float("nan")
            text += f" ({p_name}; {share:.2g} of the largest training update {cmp['update']:.3g})"
        s_diff, s_name, s_rel = cmp["bn_statistics"]
        text += f"; BN statistics {s_diff:.3g}" + (f" ({s_rel:.2g} relative, {s_name})" if s_name else "")
        if cmp["precise_bn"] is not None:
            b_diff, b_name, b_rel = cmp["precise_bn"]
            text += f"; after precise BN {b_diff:.3g}" + (f" ({b_rel:.2g} relative, {b_name})" if b_name else "")
        lines.append(text)
        if rel > tolerance and name in LOSS_CAUSES:
            lines.append(f"    {name}: {LOSS_CAUSES[name]}")
    worst = max((c["loss"][3] for c in comparisons), default=0.0)
    verdict = "same" if worst <= tolerance else "DIFFERENT"
    lines.append(f"{verdict}: largest relative loss difference {worst:.2g} (tolerance {tolerance:g})")
    return "\n".join(lines), worst <= tolerance


def check_invariance(config_file, counts, opts=(), iterations=DEFAULT_ITERATIONS, ims_per_batch=None,
                     precise_bn_iters=0, strict=False, tolerance=DEFAULT_TOLERANCE, workdir=None, out=print):
    """Train ``config_file`` for ``iterations`` at each process count of ``counts`` with one global batch and
    seed, print the comparison with ``out``; returns (records, comparisons, within tolerance)."""
    counts = list(counts)
    if not counts or any(n < 1 for n in counts):
        raise UsageError("--num-gpus needs process counts >= 1, e.g. 1,2,8")
    if iterations < 1:
        raise UsageError("--iterations must be >= 1")
    if torch.cuda.is_available() and max(counts) > torch.cuda.device_count():
        raise UsageError(f"--num-gpus {max(counts)} but this machine has {torch.cuda.device_count()} GPUs")
    batch, lr = global_batch_settings(config_file, opts, ims_per_batch)
    bad = [n for n in counts if batch % n]
    if bad:
        raise UsageError(f"the global batch {batch} is not divisible by {', '.join(map(str, bad))} processes; "
                         "give --ims-per-batch")
    args = argparse.Namespace(config_file=config_file, opts=list(opts), eval_only=False, resume=False,
                              random_init=False, trust_pickle=False)
    fixed = prepare(args, max(counts))  # checks config and data once; fixes one SEED for every run
    seed = fixed[fixed.index("SEED") + 1] if "SEED" in fixed[::2] else None
    device = "cuda" if torch.cuda.is_available() else "cpu (gloo)"
    header = (f"{PROG}: {config_file}, global batch {batch}, base LR {lr:g}, {iterations} iterations"
              + (f", SEED {seed}" if seed is not None else "") + f", {device}"
              + (", strict numerics" if strict else ""))
    records, comparisons = [], []
    with tempfile.TemporaryDirectory(prefix="check_invariance_", dir=workdir) as tmp:
        for n in counts:
            folder = os.path.join(tmp, f"np{n}")
            record_path = os.path.join(folder, "record.pth")
            os.makedirs(folder)
            run = run_opts(fixed, batch, lr, iterations, folder, precise_bn_iters)
            du.launch(_process, args=(config_file, run, record_path, strict), num_local=n)
            records.append(read_checkpoint(record_path))
        for record in records[1:]:
            comparisons.append(compare_records(records[0], record))
    text, same = format_report(header, counts, records, comparisons, tolerance)
    out(text)
    return records, comparisons, same


def _counts(text):
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of process counts: {text!r}") from None


def argument_parser():
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                            usage="%(prog)s CONFIG [--num-gpus N,N,...] [options] [KEY VALUE ...]",
                            epilog="KEY VALUE pairs override config keys as in tools/train_net.py, e.g. the "
                                   "tiny settings of the tests. SOLVER.WARMUP_ITERS 0 makes the few iterations "
                                   "train at the full LR (a sharper check of the weights).")
    parser.add_argument("config_file", metavar="CONFIG", help="transfer config (configs/transfer/)")
    parser.add_argument("--num-gpus", type=_counts, default=[1, 2], metavar="N,N,...",
                        help="process counts to compare, the first is the reference (default 1,2); "
                             "on the CPU, gloo processes")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS, help="training iterations per run")
    parser.add_argument("--ims-per-batch", type=int, default=None, metavar="B",
                        help="global batch (default: the config's batch on its reference hardware; the LR "
                             "is rescaled linearly)")
    parser.add_argument("--precise-bn-iters", type=int, default=0, metavar="K",
                        help="also run precise BN over K batches after training and compare its statistics")
    parser.add_argument("--strict", action="store_true",
                        help="on GPUs: no TF32, deterministic cuDNN algorithms without benchmarking")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest relative loss difference accepted (exit status 1 beyond it)")
    return parser


def parse_args(argv=None):
    """Flags anywhere (also after CONFIG); the remaining words are the KEY VALUE overrides (``args.opts``)."""
    parser = argument_parser()
    args, opts = parser.parse_known_args(argv)
    unknown = [word for word in opts if word.startswith("--")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.opts = opts
    return args


def main(argv=None):
    """``tools/check_invariance.py``: 0 when the runs agree within the tolerance, 1 when not, 2 for usage errors."""
    try:
        args = parse_args(argv)
        with one_line_errors(PROG, ConfigError, DatasetError, UsageError):
            _, _, same = check_invariance(args.config_file, args.num_gpus, args.opts, args.iterations,
                                          args.ims_per_batch, args.precise_bn_iters, args.strict, args.tolerance)
    except SystemExit as stop:
        return stop.code
    return 0 if same else 1
