"""Fixtures of the launch tests: tools/submit.py called in this process, and a real SLURM for the slow tests."""
import os
import shutil
import subprocess
import time

import pytest

from tool_loader import load_tool

SLURM_JOB_TIMEOUT = 420  # seconds to wait for one job


@pytest.fixture(scope="session")
def submit_tool():
    """``tools/submit.py`` as a module."""
    return load_tool("submit")


@pytest.fixture
def submit_cli(submit_tool, capsys):
    """``run(argv) -> (exit status, stdout, stderr)`` of ``tools/submit.py`` in this process."""

    def run(argv):
        try:
            code = submit_tool.main(argv)
        except SystemExit as e:  # one-line errors end with SystemExit
            code = e.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def squeue_state(job_id):
    proc = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%T", "-j", str(job_id)], capture_output=True,
                          text=True, timeout=60)
    return proc.stdout.strip() if proc.returncode == 0 else ""


class SlurmJobs:
    """The jobs a test module submitted to SLURM (``ids``, cancelled at its end), and waiting for them."""

    FAILED = ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")

    def __init__(self):
        self.ids = []

    def track(self, job):
        self.ids.append(job.job_id)
        return job

    @staticmethod
    def logs(job):
        """The end of a submitit job's stdout and stderr, for failure messages."""
        text = []
        for path in (job.paths.stdout, job.paths.stderr):
            try:
                with open(path) as f:
                    text.append(f"--- {path}\n" + f.read()[-3000:])
            except OSError:
                pass
        return "\n".join(text)

    def _still_going(self, job, deadline, timeout):
        state = squeue_state(job.job_id)
        assert time.time() < deadline, f"job {job.job_id} still {state} after {timeout} s\n{self.logs(job)}"
        assert state not in self.FAILED, f"job {job.job_id}: {state}\n{self.logs(job)}"
        return state

    def result(self, job, timeout=SLURM_JOB_TIMEOUT):
        """Wait for a job to end (by its result file; sacct is not needed); return its tasks' results."""
        deadline = time.time() + timeout
        while not job.paths.result_pickle.exists():
            self._still_going(job, deadline, timeout)
            time.sleep(0.5)
        time.sleep(0.2)
        try:
            return job.results()
        except Exception as e:  # noqa: BLE001
            raise AssertionError(f"job {job.job_id} failed: {e}\n{self.logs(job)}") from None

    def completed(self, job, results, timeout=SLURM_JOB_TIMEOUT):
        """Wait until SLURM says the job completed and ``results`` exists (a requeued job leaves the result
        file of its interrupted attempt behind until its last attempt ends)."""
        deadline = time.time() + timeout
        while True:
            state = self._still_going(job, deadline, timeout)
            if results.exists() and state in ("COMPLETED", ""):
                return self.result(job, timeout=60)
            time.sleep(0.5)


@pytest.fixture(scope="module")
def slurm():
    """A SLURM that answers, as :class:`SlurmJobs`.

    Without a SLURM that takes jobs (no ``sbatch``, or daemons stopped) the test is skipped with the reason,
    unless ``REQUIRE_SLURM=1`` (CI sets it after ``tools/slurm_local.sh start``): then it fails.
    """
    required = os.environ.get("REQUIRE_SLURM") == "1"
    if shutil.which("sbatch") is None:
        reason = "no SLURM here (sbatch not found); tools/slurm_local.sh start sets up one"
    else:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=60)
        answered = proc.returncode == 0 and proc.stdout.strip()
        reason = None if answered else (f"sbatch exists but SLURM does not answer ({proc.stderr.strip()}); "
                                         "tools/slurm_local.sh start starts the local cluster")
    if reason:
        if required:
            pytest.fail(f"REQUIRE_SLURM=1: {reason}")
        pytest.skip(reason)
    jobs = SlurmJobs()
    yield jobs
    for job_id in jobs.ids:
        subprocess.run(["scancel", str(job_id).split("_")[0]], capture_output=True, timeout=60)


@pytest.fixture
def jobs_one_thread(monkeypatch):
    """One OpenMP thread per job process: sbatch exports this environment to the jobs."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
