"""SLURM partitions without the GPUs a job asks for: refused in one line from ``sinfo``'s GRES before sbatch
is called, and sbatch's own refusal turned into one line, with fake ``sinfo``/``sbatch``/``squeue`` on PATH
(and against the real local SLURM, whose node has no GPUs, when it runs)."""
import os
import stat

import pytest
import yaml

from transfer.launch.resources import Resources, SubmitError
from transfer.launch.scheduler import check_partition_gpus, gres_gpus
from pretrain.common.paths import REPO_ROOT
from transfer.training.config import TINY_OVERRIDES

TASK = "voc_faster_rcnn_R_50_C4_24k"
CONFIG = os.path.join(REPO_ROOT, "configs", "transfer", f"{TASK}.yaml")
GRES_ERROR = "sbatch: error: Batch job submission failed: Invalid generic resource (gres) specification"

FAKE = {
    # sinfo: what $FAKE_SINFO holds (partition|GRES lines); fails without it
    "sinfo": '[ -n "$FAKE_SINFO" ] || { echo "sinfo: error: no controller" >&2; exit 1; }\n'
             'printf "%s\\n" "$FAKE_SINFO"\n',
    # sbatch: notes each call; refuses with $FAKE_SBATCH_ERROR, else prints a job id
    "sbatch": 'echo "$@" >> "$FAKE_LOG/sbatch.calls"\n'
              'if [ -n "$FAKE_SBATCH_ERROR" ]; then echo "$FAKE_SBATCH_ERROR" >&2; exit 1; fi\n'
              'echo "Submitted batch job 4242"\n',
    "squeue": 'printf "%s" "$FAKE_SQUEUE"\n',
    "srun": "exit 0\n",
    "scancel": "exit 0\n",
}


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """Fake SLURM commands first on PATH; returns the folder where sbatch notes its calls."""
    bin_dir, log = tmp_path / "fakebin", tmp_path / "fakelog"
    bin_dir.mkdir()
    log.mkdir()
    for name, body in FAKE.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    for name in ("FAKE_SINFO", "FAKE_SBATCH_ERROR", "FAKE_SQUEUE"):
        monkeypatch.delenv(name, raising=False)
    return log


def write_sweep(path, resources=None):
    data = {"name": "gres", "backbones": {"random": ""}, "tasks": [TASK], "modes": ["finetune"], "seeds": [0, 1],
            "overrides": TINY_OVERRIDES + ["SOLVER.MAX_ITER", "1"]}
    if resources:
        data["resources"] = resources
    path.write_text(yaml.safe_dump(data))
    return str(path)


def one_line_error(code, err):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def files_under(folder):
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, _, names in os.walk(folder) for n in names)


@pytest.mark.parametrize("text, gpus", [
    ("(null)", 0), ("gpu:8", 8), ("gpu:a100:4(S:0-1)", 4), ("gpu:tesla:2(S:0),mps:100", 2),
    ("gpu:a100:2,gpu:v100:2", 4), ("mps:100,gpu:1", 1), ("gpu", 1), ("gpu:0", 0), ("shard:gpu:4", 0),
])
def test_gpus_per_node_from_gres(text, gpus):
    assert gres_gpus(text) == gpus


def test_partition_check_reads_sinfo(fake_slurm, monkeypatch):
    monkeypatch.setenv("FAKE_SINFO", "cpu*|(null)\ngpu|gpu:a100:4(S:0-1)\ngpu|gpu:a100:2\nbig|gpu:8")
    check_partition_gpus(Resources(partition="gpu", gpus_per_node=4))        # the largest node has 4
    check_partition_gpus(Resources(gpus_per_node=0))                         # CPU-only: nothing to check
    check_partition_gpus(Resources(partition="nowhere", gpus_per_node=1))    # unknown here: sbatch decides
    check_partition_gpus(Resources(partition="cpu,big", gpus_per_node=8))    # one of the partitions has them
    with pytest.raises(SubmitError, match=r"the default partition cpu: its nodes have no GPUs \(sinfo GRES cpu: "
                                          r"\(null\)\).*pass --gpus-per-node 0 .*gpu \(4 per node\)"):
        check_partition_gpus(Resources())
    with pytest.raises(SubmitError, match=r"--partition gpu: its nodes have at most 4 GPU\(s\).*--gpus-per-node 4 "
                                          r"or fewer, or a --partition with GPUs: big \(8 per node\)"):
        check_partition_gpus(Resources(partition="gpu", gpus_per_node=8))
    monkeypatch.delenv("FAKE_SINFO")  # sinfo fails: no verdict here
    check_partition_gpus(Resources(gpus_per_node=8))


def test_sweep_to_a_partition_without_gpus_is_refused_before_sbatch(synthetic_root, tmp_path, fake_slurm,
                                                                      monkeypatch, submit_cli):
    monkeypatch.setenv("FAKE_SINFO", "debug*|(null)")
    root = tmp_path / "root"
    path = write_sweep(tmp_path / "gres.yaml")  # names no resources: 1 GPU per node by default
    code, _, err = submit_cli(["sweep", path, "--output-root", str(root)])
    line = one_line_error(code, err)
    assert line.startswith("submit sweep: error: the default partition debug: its nodes have no GPUs"), line
    assert "pass --gpus-per-node 0 for a CPU-only job" in line and "no partition here has that many GPUs" in line
    assert not (fake_slurm / "sbatch.calls").exists() and not root.exists()  # sbatch never called, nothing written
    # the same through one transfer run, and for the pretrain/eval group when only it asks for GPUs
    code, _, err = submit_cli(["transfer", "--partition", "debug", "--config-file", CONFIG, *TINY_OVERRIDES,
                               "OUTPUT_DIR", str(tmp_path / "one")])
    assert "--partition debug: its nodes have no GPUs" in one_line_error(code, err)
    assert not (tmp_path / "one").exists() and not (fake_slurm / "sbatch.calls").exists()
    # what the line says to pass goes through: CPU-only, the job array goes to sbatch once
    code, out, err = submit_cli(["sweep", path, "--output-root", str(root), "--gpus-per-node", "0"])
    assert code == 0, err
    assert "submitted a job array of 2 (slurm, job 4242)" in out
    assert len((fake_slurm / "sbatch.calls").read_text().splitlines()) == 1


def test_sbatch_refusal_is_one_line_and_leaves_nothing(synthetic_root, tmp_path, fake_slurm, monkeypatch, submit_cli):
    monkeypatch.setenv("FAKE_SBATCH_ERROR", GRES_ERROR)  # sinfo cannot be asked: only sbatch knows
    root = tmp_path / "root"
    path = write_sweep(tmp_path / "gres.yaml", resources={"partition": "cpu"})
    code, out, err = submit_cli(["sweep", path, "--output-root", str(root)])
    line = one_line_error(code, err)
    assert ("sbatch refused the job: Batch job submission failed: Invalid generic resource (gres) specification; "
            "the job asks for 1 GPU(s) per node on --partition cpu: pass --gpus-per-node 0") in line, line
    assert (fake_slurm / "sbatch.calls").exists()
    # no ledger, no temporary pickles or sbatch scripts of submitit (only the root's lock file)
    assert files_under(root) == [".sweep.lock"]
    # one transfer run alike
    monkeypatch.setenv("FAKE_SBATCH_ERROR", "sbatch: error: invalid partition specified: nope")
    code, _, err = submit_cli(["transfer", "--partition", "nope", "--config-file", CONFIG, *TINY_OVERRIDES,
                               "OUTPUT_DIR", str(tmp_path / "one")])
    line = one_line_error(code, err)
    assert "sbatch refused the job: invalid partition specified: nope; sinfo lists the partitions" in line, line
    assert not (tmp_path / "one").exists()  # submitit's folders, created for the submission, are gone again


def test_a_lost_ledger_with_jobs_still_queued_is_refused(synthetic_root, tmp_path, fake_slurm, monkeypatch,
                                                         submit_cli):
    monkeypatch.setenv("FAKE_SINFO", "debug*|(null)")
    root = tmp_path / "root"
    path = write_sweep(tmp_path / "gres.yaml")
    code, _, err = submit_cli(["sweep", path, "--output-root", str(root), "--gpus-per-node", "0"])
    assert code == 0, err
    (root / "sweep.json").unlink()
    script = next(p for p in files_under(root / "submitit") if p.endswith("_submission.sh"))
    monkeypatch.setenv("FAKE_SQUEUE", f"4242_0|{root / 'submitit' / script}\n4242_1|{root / 'submitit' / script}\n"
                                      "99|/elsewhere/x.sh\n")
    code, _, err = submit_cli(["sweep", path, "--output-root", str(root), "--gpus-per-node", "0"])
    line = one_line_error(code, err)
    assert "sweep.json is missing, but job(s) 4242_0, 4242_1 of an earlier submission still run" in line, line
    assert "scancel 4242_0 4242_1" in line and not (root / "sweep.json").exists()
    assert len((fake_slurm / "sbatch.calls").read_text().splitlines()) == 1  # not submitted twice


def test_real_slurm_without_gpus_refuses_a_gpu_sweep(synthetic_root, tmp_path, slurm, submit_cli):
    """The local test cluster (tools/slurm_local.sh) has no GPUs: a sweep naming no resources is refused."""
    from transfer.launch.scheduler import partition_gpus

    gpus, _, default = partition_gpus()
    if gpus.get(default, 0) > 0:
        pytest.skip(f"the default partition {default} has GPUs here")
    root = tmp_path / "root"
    code, _, err = submit_cli(["sweep", write_sweep(tmp_path / "gres.yaml"), "--output-root", str(root)])
    line = one_line_error(code, err)
    assert f"the default partition {default}: its nodes have no GPUs" in line and "--gpus-per-node 0" in line
    assert not root.exists()
