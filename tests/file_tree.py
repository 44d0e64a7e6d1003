"""What a test compares before and after a command: every file under a folder, with its bytes."""
import os


def read_tree(root):
    """``{path relative to root: bytes}`` of every file under ``root``."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files
