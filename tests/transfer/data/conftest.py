"""Helpers shared by the synthetic-data tests: a written folder's files, and the command-line tool."""
import os
import subprocess
import sys

import pytest

from pretrain.common.paths import REPO_ROOT


def _read_tree(root):
    """``{path relative to root: bytes}`` of every file under ``root``."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


def _run_make_synthetic_data(*args):
    """Run ``tools/make_synthetic_data.py`` with ``args`` in a fresh interpreter; the completed process."""
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "make_synthetic_data.py"), *map(str, args)],
                          cwd=REPO_ROOT, capture_output=True, text=True)


@pytest.fixture
def read_tree():
    """The function ``read_tree(root)``: every file under ``root`` with its bytes, by relative path."""
    return _read_tree


@pytest.fixture
def make_synthetic_data():
    """The function ``make_synthetic_data(*args)``: the command-line tool run as a subprocess."""
    return _run_make_synthetic_data
