"""Where the project's own files are: the repository root and its shipped ``configs/``."""
import os

__all__ = ["REPO_ROOT", "CONFIGS_DIR"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS_DIR = os.path.join(REPO_ROOT, "configs")
