"""tools/submit.py and transfer/launch/{submit,resources,jobs}.py without a scheduler: dry runs (the sbatch
script and the commands), resources, argument pass-through and quoting, the checkpoint protocol of the jobs."""
import os
import pickle
import shlex

import cloudpickle
import pytest
import yaml

from transfer.training.config import TINY_OVERRIDES
from transfer.launch.jobs import PretrainJob, TransferJob, job_distribution
from transfer.launch.resources import Resources, SubmitError, parse_mem, slurm_parameters, split_dist_flags
from pretrain.common.paths import REPO_ROOT

REPO = REPO_ROOT
CONFIG = os.path.join(REPO, "configs", "transfer", "coco_mask_rcnn_R_50_FPN_1x.yaml")
TINY = TINY_OVERRIDES + ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]
EVIL = '"; touch {pwned} #'
EVIL2 = "$(touch {pwned}2) `touch {pwned}3`"
TRANSFER_COMMAND = "from transfer.training.train_net import main"


def sbatch_lines(text):
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


def test_transfer_dry_run_prints_script_and_quoted_command(synthetic_root, tmp_path, submit_cli):
    pwned = tmp_path / "pwned"
    evil, evil2 = EVIL.format(pwned=pwned), EVIL2.format(pwned=pwned)
    out_dir = tmp_path / "out"
    code, out, err = submit_cli([
        "transfer", "--partition", "gpu", "--nodes", "2", "--gpus-per-node", "8", "--cpus-per-task", "10",
        "--mem", "64G", "--account", "acct", "--qos", "high", "--constraint", "volta32gb", "--timeout-min", "120",
        "--dry-run", "--config-file", CONFIG, *TINY, "TRANSFER.BACKBONE_NAME", evil, "SOLVER.BASE_LR", "0.01",
        "TRANSFER.COCO_DATASETS", "[]", "OUTPUT_DIR", str(out_dir), "DATASETS.TEST", "('coco_2017_val',)"])
    assert code == 0, err
    flags = sbatch_lines(out)
    for expected in ("--partition=gpu", "--nodes=2", "--gpus-per-node=8", "--ntasks-per-node=8", "--cpus-per-task=10",
                     "--mem=64GB", "--account=acct", "--qos=high", "--constraint=volta32gb", "--time=120",
                     "--signal=USR2@90", "--job-name=transfer_coco_mask_rcnn_R_50_FPN_1x"):
        assert f"#SBATCH {expected}" in flags, (expected, flags)
    assert not any(line.startswith("#SBATCH --array") for line in flags)
    assert "srun" in out and "submitit.core._submit" in out and "rank 0..15 of 16" in out
    command = [line for line in out.splitlines() if TRANSFER_COMMAND in line]
    assert len(command) == 1
    words = shlex.split(command[0])
    assert words[words.index("TRANSFER.BACKBONE_NAME") + 1] == evil  # quoted: one word, verbatim
    assert words[words.index("OUTPUT_DIR") + 1] == str(out_dir)
    assert "SEED" in words  # the seed is drawn once, at submission, and is part of the command
    # a dry run submits and writes nothing; the value never ran as a command
    assert not out_dir.exists() and not pwned.exists()
    code, out, err = submit_cli(["transfer", "--gpus-per-node", "0", "--tasks-per-node", "4", "--dry-run",
                                 "--config-file", CONFIG, *TINY, "TRANSFER.BACKBONE_NAME", evil2,
                                 "OUTPUT_DIR", str(out_dir)])
    assert code == 0, err
    flags = sbatch_lines(out)
    assert "#SBATCH --ntasks-per-node=4" in flags and not any("gpus" in line for line in flags)
    words = shlex.split([line for line in out.splitlines() if TRANSFER_COMMAND in line][0])
    assert words[words.index("TRANSFER.BACKBONE_NAME") + 1] == evil2
    assert not any(p.exists() for p in (pwned, tmp_path / "pwned2", tmp_path / "pwned3"))


def test_sweep_dry_run_is_one_array_with_a_parallelism_limit(synthetic_root, tmp_path, submit_cli):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "dry", "backbones": {"random": "", "other": ""},
        "tasks": ["coco_mask_rcnn_R_50_FPN_1x", "voc_faster_rcnn_R_50_C4_24k"], "modes": ["finetune", "frozen"],
        "seeds": [0, 1], "overrides": TINY, "resources": {"partition": "small", "timeout_min": 30}}))
    root = tmp_path / "root"
    code, out, err = submit_cli(["sweep", str(sweep), "--output-root", str(root), "--dry-run", "--partition", "gpu",
                                 "--gpus-per-node", "8", "--array-parallelism", "3",
                                 "--job-dir", str(tmp_path / "jobs")])
    assert code == 0, err
    flags = sbatch_lines(out)
    assert "#SBATCH --array=0-15%3" in flags and "#SBATCH --partition=gpu" in flags  # the flag wins
    assert "#SBATCH --time=30" in flags and "#SBATCH --job-name=dry" in flags  # from the sweep file
    assert f"#SBATCH --output={tmp_path / 'jobs'}/%A_%a/%A_%a_0_log.out" in flags
    commands = [shlex.split(line) for line in out.splitlines() if TRANSFER_COMMAND in line]
    assert len(commands) == 16
    dirs = sorted(words[words.index("OUTPUT_DIR") + 1] for words in commands)
    assert dirs[0] == str(root / "coco_mask_rcnn_R_50_FPN_1x" / "other" / "finetune" / "seed0")
    assert "16 to submit" in out
    assert not root.exists() and not (tmp_path / "jobs").exists()


def test_a_line_break_never_reaches_the_sbatch_script(synthetic_root, tmp_path, submit_cli):
    pwned = tmp_path / "pwned"
    sneaky = f"x\ntouch {pwned} #"
    with pytest.raises(SubmitError, match="line break"):
        Resources().updated({"partition": sneaky})
    code, out, err = submit_cli(["transfer", "--dry-run", "--partition", sneaky, "--config-file", CONFIG, *TINY])
    assert code == 2 and "line break" in err and err.count("\n") == 1 and "#SBATCH" not in out
    # a config value that names the job folder (OUTPUT_DIR; the logs go to OUTPUT_DIR/submitit)
    code, out, err = submit_cli(["transfer", "--dry-run", "--config-file", CONFIG, *TINY, "OUTPUT_DIR",
                                 str(tmp_path / sneaky)])
    assert code == 2 and "line break" in err and "#SBATCH" not in out
    assert not pwned.exists()


def test_resources_and_their_errors(tmp_path, submit_cli):
    res = Resources()
    assert (res.cluster, res.nodes, res.gpus_per_node, res.tasks, res.world_size) == ("slurm", 1, 1, 1, 1)
    assert Resources().updated({"gpus_per_node": 8, "nodes": 4}).world_size == 32
    cpu = Resources().updated({"gpus_per_node": 0, "tasks_per_node": 3})
    assert cpu.world_size == 3 and "gpus_per_node" not in slurm_parameters(cpu, "x")
    assert slurm_parameters(Resources().updated({"mem": "1.5G"}), "a b;c")["mem"] == "1536MB"
    assert slurm_parameters(Resources(), "a b;c$(x)")["job_name"] == "a_b_c_x"
    assert parse_mem("500M") == pytest.approx(500 / 1024) and parse_mem(64) == 64 and parse_mem("1T") == 1024
    for values, message in [({"mem": "lots"}, "memory 'lots'"), ({"nodes": 0}, "nodes must be >= 1"),
                            ({"cluster": "local", "nodes": 2}, "runs on this machine only"),
                            ({"cluster": "debug", "gpus_per_node": 0, "tasks_per_node": 2}, "one process"),
                            ({"gpus": 1}, "unknown key(s) gpus"), ({"nodes": "two"}, "must be an integer")]:
        with pytest.raises(SubmitError, match=None) as info:
            Resources().updated(values)
        assert message in str(info.value), (values, str(info.value))
    # --num-gpus/--num-machines of train_net are resources here; the rendezvous flags are the scheduler's
    argv, implied = split_dist_flags(["--config-file", "x.yaml", "--num-gpus", "4", "--num-machines=2", "A", "1"], "t")
    assert argv == ["--config-file", "x.yaml", "A", "1"] and implied == {"gpus_per_node": 4, "nodes": 2}
    with pytest.raises(SubmitError, match="--dist-url is set by the scheduler"):
        split_dist_flags(["--dist-url", "tcp://x:1"], "t")
    code, out, err = submit_cli(["transfer", "--cluster", "local", "--nodes", "2", "--config-file", CONFIG])
    assert code == 2 and "runs on this machine only" in err and err.count("\n") == 1
    code, out, err = submit_cli(["transfer", "--dry-run", "--config-file", str(tmp_path / "missing.yaml")])
    assert code == 2 and "missing.yaml" in err and err.count("\n") == 1
    code, out, err = submit_cli(["status", str(tmp_path)])
    assert code == 2 and "no sweep ledger" in err


def test_num_gpus_of_the_run_becomes_gpus_per_node(synthetic_root, tmp_path, submit_cli):
    code, out, err = submit_cli(["transfer", "--dry-run", "--config-file", CONFIG, "--num-gpus", "4", *TINY,
                                 "OUTPUT_DIR", str(tmp_path / "o")])
    assert code == 0, err
    assert "#SBATCH --gpus-per-node=4" in out and "#SBATCH --ntasks-per-node=4" in out
    assert "--num-gpus" not in out.split("# command")[-1]


def test_resource_flags_anywhere_and_run_arguments_in_order(submit_tool):
    args, rest = submit_tool.build_parser().parse_known_args(
        ["transfer", "--partition", "p", "--config-file", "c.yaml", "--resume", "SEED", "-1", "--nodes", "2",
         "SOLVER.STEPS", "(1,2)"])
    assert (args.partition, args.nodes) == ("p", 2)
    assert rest == ["--config-file", "c.yaml", "--resume", "SEED", "-1", "SOLVER.STEPS", "(1,2)"]


def test_jobs_follow_the_checkpoint_protocol(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "data"))
    job = TransferJob(["--config-file", CONFIG, "SEED", "3", "OUTPUT_DIR", str(tmp_path)], str(tmp_path))
    assert job.env == {"DETECTRON2_DATASETS": str(tmp_path / "data")} and job.cwd == os.getcwd()
    delayed = job.checkpoint()
    again = delayed.function
    assert isinstance(again, TransferJob) and again.resume and not job.resume and again.argv == job.argv
    assert delayed.args == () and delayed.kwargs == {}
    assert "--resume" in shlex.split(again.command()) and "--resume" not in shlex.split(job.command())
    restored = pickle.loads(cloudpickle.dumps(delayed))  # what submitit writes for the requeued job
    assert restored.function.resume and restored.function.argv == job.argv
    pre = PretrainJob(["--config-file", "x.yaml"], str(tmp_path), "SEED: 1\n")
    resumed = pre.checkpoint().function
    assert isinstance(resumed, PretrainJob) and resumed.resume and resumed.cfg_text == "SEED: 1\n"
    words = shlex.split(resumed.command())
    assert "from pretrain.training.train import main" in words[2] and words[3:5] == ["--resume", "--config-file"]
    # outside a job (the debug executor): one process, no rendezvous
    info = job_distribution()
    assert (info.rank, info.world_size, info.local_rank, info.local_size, info.master_port) == (0, 1, 0, 1, None)


def test_debug_cluster_runs_a_transfer_here(synthetic_root, tmp_path, submit_cli):
    out_dir = tmp_path / "out"
    code, out, err = submit_cli(["transfer", "--cluster", "debug", "--gpus-per-node", "0",
                                 "--job-dir", str(tmp_path / "j"), "--config-file", CONFIG, *TINY,
                                 "SOLVER.MAX_ITER", "1", "TEST.PRECISE_BN.ENABLED", "False", "OUTPUT_DIR", str(out_dir)])
    assert code == 0, err
    assert (out_dir / "results.json").is_file() and "done" in out
