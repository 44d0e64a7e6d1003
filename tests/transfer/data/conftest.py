"""Helpers shared by the synthetic-data tests: a written folder's files, and the command-line tool."""
import os
import subprocess
import sys

import pytest

import file_tree
from pretrain.common.paths import REPO_ROOT


def _run_make_synthetic_data(*args):
    """Run ``tools/make_synthetic_data.py`` with ``args`` in a fresh interpreter; the completed process."""
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "make_synthetic_data.py"), *map(str, args)],
                          cwd=REPO_ROOT, capture_output=True, text=True)


@pytest.fixture
def read_tree():
    """The function ``read_tree(root)``: every file under ``root`` with its bytes, by relative path."""
    return file_tree.read_tree


@pytest.fixture
def make_synthetic_data():
    """The function ``make_synthetic_data(*args)``: the command-line tool run as a subprocess."""
    return _run_make_synthetic_data
