"""Shared fixtures: one synthetic dataset root in the real layouts for the whole session."""
import os
import tempfile

import pytest

# before Detectron2 registers its builtin datasets: never pick up a real ./datasets by accident
os.environ.setdefault("DETECTRON2_DATASETS", os.path.join(os.path.dirname(__file__), "_no_datasets_here"))

# `make test` runs the suite in one pytest-xdist worker per core: each worker's torch (and the processes its
# tests start) then use their share of the cores instead of all of them each
if os.environ.get("PYTEST_XDIST_WORKER"):
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

# the caches (dataset checks, timed pretraining numerics) in one folder shared by the session's workers and
# the processes they start, not in the user's home: two fresh runs of one test then use one timed choice
os.environ.setdefault("SSL_D2_TRANSFER_CACHE", os.path.join(tempfile.gettempdir(), f"ssl-d2-transfer-tests-{os.getuid()}"))

import transfer  # noqa: E402,F401  (runtime fixes before anything imports Detectron2)


def pytest_collection_modifyitems(config, items):
    """With pytest-xdist's ``--dist loadgroup`` (``make test``), the tests that submit jobs to SLURM run in one
    worker, one after another: the local cluster is one node, and two tests' jobs would queue behind each other."""
    for item in items:
        if "slurm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("slurm"))


@pytest.fixture(autouse=True)
def _no_handlers_on_closed_streams():
    """A command run in a test sets up log handlers on that test's streams (capsys closes them after it), and
    Detectron2's ``setup_logger`` remembers its calls: after each test, handlers writing to a closed stream are
    removed and the memory cleared, so that a later test (in any order, in any pytest-xdist worker) logs to
    its own streams instead of failing with "I/O operation on closed file"."""
    import logging
    import sys

    yield
    loggers = [logging.getLogger()] + [log for log in logging.Logger.manager.loggerDict.values()
                                       if isinstance(log, logging.Logger)]
    removed = False
    for log in loggers:
        for handler in list(log.handlers):
            if getattr(getattr(handler, "stream", None), "closed", False):
                log.removeHandler(handler)
                removed = True
    d2_logger = sys.modules.get("detectron2.utils.logger")
    if removed and d2_logger is not None:
        d2_logger.setup_logger.cache_clear()


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """COCO, keypoints, VOC, LVIS and ImageNet-style data, written once, as $DETECTRON2_DATASETS."""
    from transfer.data.datasets import set_datasets_root
    from transfer.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("datasets")
    counts = write_synthetic(root, num_images=24, seed=0)
    set_datasets_root(root)
    return root, counts


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny models and tensors: one intra-op thread is as fast as two, and steady on a busy machine.
    A test module opts in with ``pytestmark = pytest.mark.usefixtures("torch_one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

