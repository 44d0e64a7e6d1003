"""Atomic file writes: write to a temporary name in the same folder, then ``os.replace``.

A reader never sees a half-written file, and a failed write leaves no file behind.
"""
import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it vanishes.

    The temporary name keeps ``path``'s extension, so readers that dispatch on it (Detectron2's
    checkpointer on ``.pkl``) treat it as the final file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    suffix = ".pth.tar" if base.endswith(".pth.tar") else os.path.splitext(base)[1]
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{suffix}", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path, data):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return path


def write_text_atomic(path, text):
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, data, indent=2):
    return write_text_atomic(path, json.dumps(data, indent=indent) + "\n")


def unwritable_reason(folder):
    """Why ``folder`` cannot be created or written (one line), or None; creates nothing.

    An existing ``folder`` must be a writable directory; a missing one needs its nearest existing parent
    to be a writable directory (every path component above it a directory)."""
    path = os.path.abspath(os.fspath(folder))
    if os.path.exists(path):
        if not os.path.isdir(path):
            return f"{folder}: exists and is not a directory"
        return None if os.access(path, os.W_OK | os.X_OK) else f"{folder}: not writable"
    parent = os.path.dirname(path)
    while not os.path.exists(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{folder}: cannot create: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{folder}: cannot create: {parent} is not writable"
    return None
