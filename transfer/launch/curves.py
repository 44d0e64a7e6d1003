"""Transfer curves: the evaluations of the checkpoints a pretraining run keeps every K epochs, while it runs.

A sweep whose ``pretrain`` section has a ``curves`` entry (:mod:`transfer.launch.pipeline`) pretrains with
``SOLVER.SNAPSHOT_EPOCHS K``: after every K-th epoch the trainer writes ``checkpoint_epochXXXX.pth`` into the
run's folder, once and atomically (it never appears half-written, and a resumed or requeued run that reaches
the epoch again leaves it alone, so what an evaluation read stays what it read). Each such checkpoint, epoch
e of backbone b, has runs of its own, labelled ``b@ep<e>`` (:func:`pretrain.common.runs.epoch_label`) and
laid out like every other run of the sweep:

- ``pretrain/b@ep<e>`` (kind ``convert``): the checkpoint converted to verified Detectron2 weights,
  ``pretrain/b/weights_epochXXXX.pkl``, when the curves name Detectron2 tasks and b is an RGB ResNet;
- ``<task>/b@ep<e>/<mode>/seed<k>``: each Detectron2 task, frozen or fine-tuned, after that conversion;
- ``linear_<name>/b@ep<e>/frozen/seed<k>``, ``knn_<name>/b@ep<e>/frozen/seed<k>``, ``mi_<name>/b@ep<e>``:
  the frozen-feature evaluations, on the checkpoint itself.

They enter the ledger when their checkpoint exists, and from then on are runs like the others: submitted
once (the ledger, rewritten under its lock, is the truth of what was submitted), resubmitted when failed by
the next ``submit.py sweep``, never duplicated.

Who submits them: a watcher, one per pretraining run (``pretrain/b/curves``, kind ``watch``), a one-CPU job
submitted next to the pretraining job (never after it, never blocking it). Every ``--poll-seconds`` it takes
the ledger's lock, looks for new checkpoints and submits their runs through the same functions as ``submit.py
sweep`` (on SLURM the Detectron2 runs go at once with ``afterok`` on their conversion; locally they go when
the conversion is done); it ends once the pretraining run has ended and everything of its checkpoints is
submitted, writing ``curves.json`` (the epochs and run ids) when the pretraining is done. A watcher rather
than one dependent job per epoch, because SLURM dependencies wait for jobs to end, not for files to appear:
per-epoch jobs would need the pretraining split into one job per K epochs (each requeue and each
``SOLVER.STOP_ITER`` would shift them), and the number of epochs is only known once the data and the number
of processes are (``SOLVER.MAX_ITER`` runs). The watcher works the same on SLURM and on the local executor,
survives requeues of the pretraining job (it reads the scheduler's state, and the checkpoints on disk) and
its own (it starts over; the ledger says what is done). ``submit.py sweep`` looks for new checkpoints too,
so a rerun submits what a dead watcher left. On the debug cluster, where every job runs in the submitting
process, the pretraining runs first and the sweep then submits its checkpoints' runs itself.
"""
import datetime
import os

from pretrain.common.fileio import write_json_atomic
from pretrain.common.runs import (CURVES_FILE, epoch_label, snapshot_epoch, snapshot_file, snapshot_weights_file,
                                  split_epoch_label)
from transfer.launch.grid import Run, knn_run, linear_run, mi_run, transfer_run
from transfer.launch.pipeline import pretrain_output

__all__ = ["snapshot_epochs", "watch_id", "epoch_runs", "curve_runs", "curve_templates", "watch_runs",
           "write_summary"]


def snapshot_epochs(folder):
    """The epochs of the complete snapshots (``checkpoint_epochXXXX.pth``) in a pretraining folder, sorted."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(e for e in map(snapshot_epoch, names) if e is not None)


def watch_id(backbone):
    """The ledger id of the curve watcher of ``pretrain/<backbone>``."""
    return f"pretrain/{backbone}/curves"


def _by_name(specs, names):
    known = {s.name: s for s in specs}
    return [known[n] for n in names]


def epoch_runs(sweep, root, backbone, epoch, after=()):
    """The runs of the checkpoint of ``backbone`` (a pretrained one) after ``epoch`` epochs: its conversion
    and Detectron2 tasks (RGB ResNets only), then its linear, kNN and MI evaluations. ``after``: prerequisites
    of the runs that read the checkpoint (none once it exists)."""
    curves, spec = sweep.curves, sweep.pretrain[backbone]
    root = os.path.abspath(root)
    folder = pretrain_output(root, backbone)
    checkpoint = os.path.join(folder, snapshot_file(epoch))
    label = epoch_label(backbone, epoch)
    runs = []
    if curves.tasks and spec.rgb_backbone:
        weights = os.path.join(folder, snapshot_weights_file(epoch))
        convert = Run(f"pretrain/{label}", "pretrain", label, checkpoint, "convert", 0, spec.config, folder,
                      kind="convert", after=tuple(after), args=(checkpoint, weights),
                      done_file=snapshot_weights_file(epoch))
        runs.append(convert)
        for task in curves.tasks:
            for mode in curves.modes:
                for seed in curves.seeds:
                    runs.append(transfer_run(sweep, root, task, label, weights, mode, seed, (convert.id,)))
    for lin in _by_name(sweep.linear, curves.linear):
        runs += [linear_run(lin, root, label, checkpoint, seed, tuple(after)) for seed in curves.seeds]
    for knn in _by_name(sweep.knn, curves.knn):
        runs += [knn_run(knn, root, label, checkpoint, seed, tuple(after)) for seed in curves.seeds]
    for mi in _by_name(sweep.mi, curves.mi):
        runs.append(mi_run(mi, root, label, checkpoint, folder, tuple(after)))
    return runs


def curve_runs(sweep, root, backbones=None):
    """The runs of every checkpoint kept so far by the pretraining runs (all, or those of ``backbones``)."""
    if sweep.curves is None:
        return []
    runs = []
    for backbone in sweep.pretrain:
        if backbones is None or backbone in backbones:
            for epoch in snapshot_epochs(pretrain_output(root, backbone)):
                runs += epoch_runs(sweep, root, backbone, epoch)
    return runs


def curve_templates(sweep, root):
    """One checkpoint's runs per pretrained backbone, as if it were still to come (epoch 0, waiting on the
    pretraining): what :func:`transfer.launch.grid.check_runs` checks before anything is submitted."""
    if sweep.curves is None:
        return []
    return [run for backbone in sweep.pretrain
            for run in epoch_runs(sweep, root, backbone, 0, after=(f"pretrain/{backbone}",))]


def watch_runs(sweep, root, resources_text="{}"):
    """The watcher run of every pretraining run of a sweep with curves; ``resources_text``: the resources
    given on the command line, as JSON (the watcher resolves them as the sweep did)."""
    if sweep.curves is None:
        return []
    root = os.path.abspath(root)
    return [Run(watch_id(b), "curves", b, "", "curves", 0, "", pretrain_output(root, b), kind="watch",
                args=(sweep.path, root, b, resources_text), done_file=CURVES_FILE) for b in sweep.pretrain]


def write_summary(sweep, root, backbone, runs):
    """``pretrain/<backbone>/curves.json``: the epochs whose checkpoints were evaluated and their run ids (the
    watcher's done file)."""
    epochs = {}
    for run in runs:
        epochs.setdefault(split_epoch_label(run.backbone)[1], []).append(run.id)
    data = {"backbone": backbone, "every": sweep.curves.every, "epochs": sorted(epochs),
            "runs": {str(e): epochs[e] for e in sorted(epochs)},
            "finished": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    return write_json_atomic(os.path.join(pretrain_output(root, backbone), CURVES_FILE), data)
