"""Transfer curves: a sweep's pretraining keeps a checkpoint every K epochs and each gets its own evaluation runs
(kNN, linear, MI, Detectron2 after a conversion), submitted by a watcher through the ledger as checkpoints
appear: the curves section, the runs of a checkpoint, the watcher's SLURM submissions (dependencies, no
duplicates when it starts over), and the whole thing end to end on the local executor with the pretraining
job requeued in the middle (and on a real SLURM when there is one)."""
import contextlib
import json
import os
import signal
import subprocess
import time

import pytest
import yaml

from pretrain.common.paths import REPO_ROOT
from transfer.launch import ledger as ledger_mod
from transfer.launch import sweep as sweep_mod
from transfer.launch.curves import curve_runs, curve_templates, snapshot_epochs, watch_runs
from transfer.launch.ledger import Ledger, format_status
from transfer.launch.sweep import run_sweep, watch_curves
from transfer.launch.sweep_fields import SweepError
from transfer.launch.sweep_file import load_sweep
from transfer.training.config import TINY_OVERRIDES

PRETRAIN = os.path.join(REPO_ROOT, "configs", "pretrain")
LINEAR = os.path.join(REPO_ROOT, "configs", "linear", "cdp.yaml")
VOC = "voc_faster_rcnn_R_50_C4_24k"
TINY_PRETRAIN = ["MODEL.ARCH", "resnet18", "INPUT.SIZE", "32", "SOLVER.BATCH_SIZE", "4", "MOCO.K", "16",
                 "MODEL.DIM", "16", "SOLVER.EPOCHS", "2", "KNN.PERIOD", "0", "DATA.NUM_WORKERS", "0",
                 "MODEL.PRECISION", "fp32", "TENSORBOARD", "False", "LOG_PERIOD", "1", "SEED", "0"]
TIMEOUT = 900


def quiet(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def small_imagenet(tmp_path_factory):
    """30 training and 20 validation images in ImageNet's class folders, small: pretraining, kNN, linear."""
    from transfer.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("small")
    write_synthetic(root, kinds="imagenet", num_images=3, image_size=96)
    return str(root / "imagenet")


def eval_entry(imagenet, *extra):
    return {"config": LINEAR, "overrides": ["DATA.ROOT", imagenet, "DATA.ATTRIBUTE", "", "INPUT.SIZE", "32",
                                            "DATA.NUM_WORKERS", "0", "LINEAR.FEATURE_BATCH_SIZE", "32", *extra]}


def curve_sweep(tmp_path, imagenet, curves=None, cluster="debug", **extra):
    data = {"name": "curves",
            "pretrain": {"overrides": ["DATA.ROOT", imagenet, *TINY_PRETRAIN],
                         "backbones": {"moco": os.path.join(PRETRAIN, "moco_v2_R_50.yaml")},
                         "curves": curves or {"every": 1, "knn": ["tiny"], "tasks": [VOC], "modes": ["frozen"]}},
            "evaluations": {"knn": {"tiny": eval_entry(imagenet, "KNN.K", "10")},
                            "linear": {"tiny": eval_entry(imagenet, "SOLVER.EPOCHS", "1")}},
            "modes": ["frozen"], "seeds": [0], "overrides": TINY_OVERRIDES + ["SOLVER.MAX_ITER", "2"],
            "resources": {"cluster": cluster, "gpus_per_node": 0, "timeout_min": 30}}
    data.update(extra)
    path = tmp_path / "curves.yaml"
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return str(path)


def knn_only(imagenet):
    return {"knn": {"tiny": eval_entry(imagenet, "KNN.K", "10")}}


def touch_snapshots(root, backbone, *epochs):
    folder = os.path.join(root, "pretrain", backbone)
    os.makedirs(folder, exist_ok=True)
    for e in epochs:
        open(os.path.join(folder, f"checkpoint_epoch{e:04d}.pth"), "wb").close()
    return folder


def test_curves_section_is_read_and_sets_the_snapshot_period(tmp_path, small_imagenet):
    sweep = load_sweep(curve_sweep(tmp_path, small_imagenet, {"every": 3, "knn": "tiny", "linear": ["tiny"],
                                                               "tasks": [VOC]}, seeds=[0, 1]))
    c = sweep.curves
    assert (c.every, c.knn, c.linear, c.mi, c.tasks) == (3, ("tiny",), ("tiny",), (), (VOC,))
    assert c.modes == ("frozen",) and c.seeds == (0, 1)  # the sweep's, when the curves name none
    assert sweep.config_files[VOC].endswith(f"configs/transfer/{VOC}.yaml") and sweep.tasks == []
    overrides = sweep.pretrain["moco"].overrides
    assert overrides[-2:] == ("SOLVER.SNAPSHOT_EPOCHS", "3")


@pytest.mark.parametrize("curves, message", [
    ({"every": 0, "knn": ["tiny"]}, "'every' must be a positive number of epochs"),
    ({"every": 1}, "names no evaluation"),
    ({"every": 1, "knn": ["nope"]}, "knn: 'nope' is not an entry of evaluations: knn (tiny)"),
    ({"every": 1, "mi": ["tiny"]}, "mi: 'tiny' is not an entry of evaluations: mi (none there)"),
    ({"every": 1, "tasks": [VOC], "modes": ["frozen", "linear"]}, "mode 'linear' is not one of"),
    ({"every": 1, "tasks": ["nope_task"]}, "unknown task 'nope_task'"),
    ({"every": 1, "knn": ["tiny"], "epochs": 3}, "unknown key(s) epochs"),
    ({"every": 1, "knn": ["tiny"], "resources": {"gpus_per_node": "x"}}, "gpus_per_node must be an integer"),
])
def test_curves_section_errors(tmp_path, small_imagenet, curves, message):
    with pytest.raises(SweepError) as e:
        load_sweep(curve_sweep(tmp_path, small_imagenet, curves))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_snapshot_period_is_the_curves_to_set(tmp_path, small_imagenet):
    path = curve_sweep(tmp_path, small_imagenet)
    with open(path) as f:
        data = yaml.safe_load(f)
    data["pretrain"]["overrides"] += ["SOLVER.SNAPSHOT_EPOCHS", 2]
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    with pytest.raises(SweepError, match="may not set SOLVER.SNAPSHOT_EPOCHS: 'curves: every' sets it"):
        load_sweep(path)


def test_each_kept_checkpoint_has_its_runs_in_the_usual_layout(tmp_path, small_imagenet):
    curves = {"every": 1, "knn": ["tiny"], "linear": ["tiny"], "tasks": [VOC], "modes": ["frozen", "finetune"]}
    path = curve_sweep(tmp_path, small_imagenet, curves)
    sweep, root = load_sweep(path), str(tmp_path / "out")
    assert curve_runs(sweep, root) == []
    folder = touch_snapshots(root, "moco", 1, 2)
    # what an atomic write leaves while it writes, and files of other runs, are not checkpoints to evaluate
    open(os.path.join(folder, ".checkpoint_epoch0003.pth.abc.tmp.pth"), "wb").close()
    open(os.path.join(folder, "checkpoint_last.pth"), "wb").close()
    assert snapshot_epochs(folder) == [1, 2]
    runs = {r.id: r for r in curve_runs(sweep, root)}
    assert list(runs) == [
        "pretrain/moco@ep1", f"{VOC}/moco@ep1/frozen/seed0", f"{VOC}/moco@ep1/finetune/seed0",
        "linear_tiny/moco@ep1/frozen/seed0", "knn_tiny/moco@ep1/frozen/seed0",
        "pretrain/moco@ep2", f"{VOC}/moco@ep2/frozen/seed0", f"{VOC}/moco@ep2/finetune/seed0",
        "linear_tiny/moco@ep2/frozen/seed0", "knn_tiny/moco@ep2/frozen/seed0"]
    convert = runs["pretrain/moco@ep1"]
    assert convert.kind == "convert" and convert.after == () and convert.argv == [
        os.path.join(folder, "checkpoint_epoch0001.pth"), os.path.join(folder, "weights_epoch0001.pkl")]
    assert convert.done_file == "weights_epoch0001.pkl" and convert.output_dir == folder
    d2 = runs[f"{VOC}/moco@ep1/finetune/seed0"]
    assert d2.after == ("pretrain/moco@ep1",) and d2.weights == os.path.join(folder, "weights_epoch0001.pkl")
    assert d2.output_dir == os.path.join(root, VOC, "moco@ep1", "finetune", "seed0")
    knn = runs["knn_tiny/moco@ep2/frozen/seed0"]
    assert knn.kind == "knn" and knn.after == () and knn.weights == os.path.join(folder, "checkpoint_epoch0002.pth")
    assert knn.argv[knn.argv.index("BACKBONE_NAME") + 1] == "moco@ep2"
    # before any checkpoint: the runs checked at submission wait on the pretraining
    assert {r.after for r in curve_templates(sweep, root) if r.kind != "transfer"} == {("pretrain/moco",)}
    assert [r.id for r in watch_runs(sweep, root)] == ["pretrain/moco/curves"]


def test_a_cmc_checkpoint_gets_its_frozen_evaluations_only(tmp_path, small_imagenet):
    path = curve_sweep(tmp_path, small_imagenet, {"every": 1, "knn": ["tiny"], "tasks": [VOC]})
    with open(path) as f:
        data = yaml.safe_load(f)
    data["pretrain"]["backbones"] = {"cmc": os.path.join(PRETRAIN, "cmc_R_18.yaml")}
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    sweep, root = load_sweep(path), str(tmp_path / "out")
    touch_snapshots(root, "cmc", 1)
    assert [r.id for r in curve_runs(sweep, root)] == ["knn_tiny/cmc@ep1/frozen/seed0"]


class FakeExecutor:
    """Records what a sweep submits to SLURM (job class, dependency) instead of submitting it."""

    submitted = []

    def __init__(self, res, folder, name):
        self.params = {}

    def update_parameters(self, **kw):
        self.params.update(kw)

    @contextlib.contextmanager
    def batch(self):
        yield

    def submit(self, job):
        dependency = self.params.get("additional_parameters", {}).get("dependency")
        FakeExecutor.submitted.append((type(job).__name__, job.output_dir, dependency,
                                       os.environ.get("SLURM_MEM_PER_CPU")))
        return type("FakeJob", (), {"job_id": str(100 + len(FakeExecutor.submitted))})()


def test_the_watcher_submits_each_checkpoint_once_with_dependencies_on_slurm(tmp_path, small_imagenet, monkeypatch):
    """On SLURM the pretraining and its watcher go out together; the watcher submits each checkpoint's runs
    as it appears (Detectron2 runs with afterok on the conversion), without this job's SLURM variables, and
    ends once the pretraining is done; started again (a requeued watcher) it submits nothing twice."""
    FakeExecutor.submitted = []
    monkeypatch.setattr(sweep_mod, "make_executor", FakeExecutor)
    monkeypatch.setattr(sweep_mod, "check_cluster", lambda res: None)
    states = {}
    monkeypatch.setattr(ledger_mod, "job_states", lambda cluster, ids: {i: states.get(i, ("pending", "PENDING"))
                                                                        for i in ids})
    path = curve_sweep(tmp_path, small_imagenet, cluster="slurm")
    root = str(tmp_path / "out")
    run_sweep(path, root, check=False, out=quiet)
    assert [s[:3] for s in FakeExecutor.submitted] == [
        ("PretrainStageJob", os.path.join(root, "pretrain", "moco"), None),
        ("WatchJob", os.path.join(root, "pretrain", "moco"), None),
        ("LinearEvalJob", os.path.join(root, "linear_tiny", "moco", "frozen", "seed0"), "afterok:101"),
        ("KNNEvalJob", os.path.join(root, "knn_tiny", "moco", "frozen", "seed0"), "afterok:101")]
    states["101"] = ("running", "RUNNING")
    folder = touch_snapshots(root, "moco", 1)
    monkeypatch.setenv("SLURM_MEM_PER_CPU", "4000")  # the watcher's own job's: not for the jobs it submits
    rounds = []

    def next_round(seconds):  # between two rounds of the watcher: the pretraining finishes its second epoch
        rounds.append(seconds)
        touch_snapshots(root, "moco", 2)
        open(os.path.join(folder, "weights.pkl"), "wb").close()  # done

    monkeypatch.setattr(sweep_mod.time, "sleep", next_round)
    summary = watch_curves(path, root, "moco", {}, poll_s=7, out=quiet)
    assert rounds == [7] and os.environ["SLURM_MEM_PER_CPU"] == "4000"
    new = FakeExecutor.submitted[4:]
    assert [(s[0], os.path.basename(s[1]) if s[0] == "ConvertJob" else os.path.relpath(s[1], root), s[2], s[3])
            for s in new] == [
        ("ConvertJob", "moco", None, None), ("KNNEvalJob", "knn_tiny/moco@ep1/frozen/seed0", None, None),
        ("TransferJob", f"{VOC}/moco@ep1/frozen/seed0", "afterok:105", None),
        ("ConvertJob", "moco", None, None), ("KNNEvalJob", "knn_tiny/moco@ep2/frozen/seed0", None, None),
        ("TransferJob", f"{VOC}/moco@ep2/frozen/seed0", "afterok:108", None)]
    with open(summary) as f:
        data = json.load(f)
    assert summary == os.path.join(folder, "curves.json") and data["epochs"] == [1, 2] and data["every"] == 1
    assert data["runs"]["1"] == ["pretrain/moco@ep1", f"{VOC}/moco@ep1/frozen/seed0", "knn_tiny/moco@ep1/frozen/seed0"]
    # a watcher started again (its job requeued), and the next submission of the sweep: nothing twice
    assert watch_curves(path, root, "moco", {}, poll_s=7, out=quiet) == summary
    run_sweep(path, root, check=False, out=quiet)
    assert len(FakeExecutor.submitted) == 10
    ledger = Ledger.load(root)
    assert all(r["attempts"] == 1 for r in ledger.runs) and len({r["id"] for r in ledger.runs}) == len(ledger.runs)
    assert ledger.record("pretrain/moco/curves")["state"] == "done"


@pytest.mark.slow
def test_curves_on_the_debug_cluster_with_an_interrupted_pretraining(tmp_path, small_imagenet):
    """In this process: the pretraining stops after its first epoch (SOLVER.STOP_ITER, as a preemption would),
    the sweep evaluates the checkpoint kept so far; submitted again, the pretraining resumes, keeps its second
    checkpoint, and only that one's evaluation is added: one kNN run per checkpoint, each once."""
    curves = {"every": 1, "knn": ["tiny"]}
    path = curve_sweep(tmp_path, small_imagenet, curves, evaluations=knn_only(small_imagenet))
    with open(path) as f:
        data = yaml.safe_load(f)
    data["pretrain"]["overrides"] += ["SOLVER.STOP_ITER", 7]  # 7 iterations per epoch
    with open(tmp_path / "stopped.yaml", "w") as f:
        yaml.safe_dump(data, f)
    root = str(tmp_path / "out")
    ledger = run_sweep(str(tmp_path / "stopped.yaml"), root, out=quiet)
    states = {r["id"]: r["state"] for r in ledger.runs}
    assert states == {"pretrain/moco": "failed", "knn_tiny/moco/frozen/seed0": "pending",
                      "knn_tiny/moco@ep1/frozen/seed0": "done"}, format_status(ledger)
    kept = os.path.join(root, "pretrain", "moco", "checkpoint_epoch0001.pth")
    inode = os.stat(kept).st_ino
    ledger = run_sweep(path, root, out=quiet)
    runs = {r["id"]: r for r in ledger.runs}
    assert all(r["state"] == "done" for r in ledger.runs) and set(runs) == {
        "pretrain/moco", "knn_tiny/moco/frozen/seed0", "knn_tiny/moco@ep1/frozen/seed0",
        "knn_tiny/moco@ep2/frozen/seed0"}, format_status(ledger)
    assert runs["pretrain/moco"]["attempts"] == 2
    assert all(r["attempts"] == 1 for rid, r in runs.items() if rid != "pretrain/moco")
    assert os.stat(kept).st_ino == inode
    from transfer.report import make_report

    (curve,) = make_report(root, metrics="all").report.curves.curves
    assert (curve.task, curve.epochs(), list(curve.lines)) == ("knn_tiny", [1, 2], ["moco"])


# ------------------------------------------------------------------------------ end to end, real jobs

def _children(pid):
    """Pids whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == int(pid):
                out.append(int(entry))
    return out


def _requeue_in_epoch_2(folder, job_id, interrupt, deadline, logs):
    """Once the first checkpoint is kept and the run's resumable checkpoint written after it (epoch 2 is under
    way), send ``interrupt(job_id)`` (what a time limit or a preemption sends); returns the kept checkpoint's
    inode then."""
    kept, last = os.path.join(folder, "checkpoint_epoch0001.pth"), os.path.join(folder, "checkpoint_last.pth")
    while not (os.path.exists(kept) and os.path.exists(last)):
        assert time.time() < deadline, f"no {kept}\n{logs()}"
        time.sleep(0.05)
    inode = os.stat(kept).st_ino
    interrupt(job_id)
    return inode


def _check_curves(root, ledger, inode):
    assert all(r["state"] == "done" for r in ledger.runs), format_status(ledger)
    ids = [r["id"] for r in ledger.runs]
    assert len(ids) == len(set(ids))
    curve_ids = {"pretrain/moco@ep1", "pretrain/moco@ep2", "knn_tiny/moco@ep1/frozen/seed0",
                 "knn_tiny/moco@ep2/frozen/seed0", f"{VOC}/moco@ep1/frozen/seed0", f"{VOC}/moco@ep2/frozen/seed0"}
    assert set(ids) == {"pretrain/moco", "pretrain/moco/curves", "knn_tiny/moco/frozen/seed0"} | curve_ids
    # one job each: the requeued pretraining kept its job, and nothing was submitted twice
    assert all(r["attempts"] == 1 and not r["history"] for r in ledger.runs), format_status(ledger)
    jobs = {r["job_id"] for r in ledger.runs}
    assert len(jobs) == len(ledger.runs)
    folder = os.path.join(root, "pretrain", "moco")
    assert os.stat(os.path.join(folder, "checkpoint_epoch0001.pth")).st_ino == inode  # never rewritten
    with open(os.path.join(folder, "log.txt")) as f:
        log = f.read()
    # the requeued job continued from its checkpoint (in epoch 2, or after training when the signal came late)
    assert log.count("resumed from") + log.count("nothing to do") == 1, log
    for rid in curve_ids - {"pretrain/moco@ep1", "pretrain/moco@ep2"}:
        with open(os.path.join(root, rid, "results.json")) as f:
            record = json.load(f)
        assert record["backbone"] == rid.split("/")[1] and record["mode"] == "frozen", record
        epoch = int(rid.split("@ep")[1].split("/")[0])
        assert record["weights"] == os.path.join(folder, f"checkpoint_epoch{epoch:04d}.pth" if rid.startswith("knn")
                                                 else f"weights_epoch{epoch:04d}.pkl")
    with open(os.path.join(folder, "curves.json")) as f:
        assert json.load(f)["epochs"] == [1, 2]

    from transfer.report import make_report

    output = make_report(root, plots_dir=os.path.join(root, "plots"), html_path=os.path.join(root, "report.html"))
    curves = output.report.curves
    assert {c.task: c.epochs() for c in curves.curves} == {"knn_tiny": [1, 2], VOC: [1, 2]}
    assert {c.task: (c.family, c.metric, c.modes, list(c.lines)) for c in curves.curves} == {
        "knn_tiny": ("knn", "top1", ["frozen"], ["moco"]), VOC: ("bbox", "AP", ["frozen"], ["moco"])}
    assert {os.path.basename(p) for p in output.plot_files} >= {"curves_knn_tiny.png", f"curves_{VOC}.png"}


@pytest.mark.slow
def test_curves_end_to_end_on_the_local_executor_with_a_requeued_pretraining(tmp_path, synthetic_root,
                                                                             small_imagenet, jobs_one_thread):
    """Two checkpoints, two evaluations each (kNN; conversion then a frozen Detectron2 run), all real jobs on
    the local executor: the pretraining job is signalled as a time limit or a preemption would once its first
    checkpoint is kept, requeues and continues; its watcher submits every run once, all results land."""
    path = curve_sweep(tmp_path, small_imagenet, cluster="local", evaluations=knn_only(small_imagenet))
    root = str(tmp_path / "out")
    ledger = run_sweep(path, root, poll_s=0.5, out=quiet)
    pre = ledger.record("pretrain/moco")

    def usr2_to_the_task(controller):  # the local executor's job id is its controller; the task is its child
        deadline = time.time() + 60
        while not _children(controller):
            assert time.time() < deadline
            time.sleep(0.05)
        for pid in _children(controller):
            os.kill(pid, signal.SIGUSR2)

    def logs():
        return "\n".join(open(p).read()[-3000:] for p in (pre["stdout"], pre["stderr"]) if os.path.exists(p))

    inode = _requeue_in_epoch_2(os.path.join(root, "pretrain", "moco"), pre["job_id"], usr2_to_the_task,
                                time.time() + TIMEOUT, logs)
    ledger = run_sweep(path, root, wait=True, poll_s=0.5, timeout_s=TIMEOUT, out=quiet)
    with open(pre["stdout"]) as f:
        assert f"Requeued job {pre['job_id']}" in f.read(), logs()
    _check_curves(root, ledger, inode)


@pytest.mark.slow
def test_curves_end_to_end_on_slurm_with_a_requeued_pretraining(tmp_path, synthetic_root, small_imagenet, slurm,
                                                                jobs_one_thread):
    """The same on a real SLURM: the watcher is a job of its own, the Detectron2 runs wait on their conversion
    with afterok, the pretraining job is requeued by USR2 as at its time limit."""
    path = curve_sweep(tmp_path, small_imagenet, cluster="slurm", evaluations=knn_only(small_imagenet))
    root = str(tmp_path / "out")
    ledger = run_sweep(path, root, poll_s=1, out=quiet)
    pre = ledger.record("pretrain/moco")
    slurm.ids.extend(r["job_id"] for r in ledger.runs if r["job_id"])

    def logs():
        return "\n".join(open(p).read()[-3000:] for p in (pre["stdout"], pre["stderr"]) if os.path.exists(p))

    def usr2(job_id):
        subprocess.run(["scancel", "--signal=USR2", str(job_id)], check=True, timeout=60)

    inode = _requeue_in_epoch_2(os.path.join(root, "pretrain", "moco"), pre["job_id"], usr2, time.time() + TIMEOUT,
                                logs)
    ledger = run_sweep(path, root, wait=True, poll_s=1, timeout_s=TIMEOUT, out=quiet)
    slurm.ids.extend(r["job_id"] for r in ledger.runs if r["job_id"])
    with open(pre["stdout"]) as f:
        assert f"Requeued job {pre['job_id']}" in f.read(), logs()
    _check_curves(root, ledger, inode)


def test_shipped_curves_sweep_checks(synthetic_root, tmp_path, monkeypatch):
    """configs/sweeps/curves_tiny.yaml: its curves entry, and every run it will have checked on the synthetic data."""
    from transfer.launch.grid import check_runs, expand
    from transfer.launch.sweep import resource_groups

    root, _ = synthetic_root
    monkeypatch.chdir(tmp_path)
    os.symlink(root, tmp_path / "datasets_synthetic")
    sweep = load_sweep(os.path.join(REPO_ROOT, "configs", "sweeps", "curves_tiny.yaml"))
    c = sweep.curves
    assert (c.every, c.knn, c.linear, c.mi, c.tasks, c.modes) == (
        1, ("imagenet",), ("imagenet",), ("views",), (VOC,), ("frozen", "finetune"))
    assert {b: s.method for b, s in sweep.pretrain.items()} == {"moco": "moco", "ir": "ir"}
    groups = resource_groups(sweep)
    assert (groups["watch"].gpus_per_node, groups["watch"].tasks, groups["watch"].cluster) == (0, 1, "local")
    out = str(tmp_path / "out")
    check_runs(expand(sweep, out) + curve_templates(sweep, out), groups["transfer"], groups)
