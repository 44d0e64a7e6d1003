"""Scripts of ``tools/`` as modules, so tests call their ``main(argv)`` in this process.

``tests/`` is on ``sys.path`` (its conftest puts it there), so any test imports this module by name.
"""
import importlib.util
import os

from pretrain.common.paths import REPO_ROOT


def load_tool(name):
    """``tools/<name>.py`` as a fresh module."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", os.path.join(REPO_ROOT, "tools", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
