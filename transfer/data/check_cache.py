"""The cache of dataset checks: an unchanged dataset is checked once, not before every run.

A check's result (the dataset's summary, :mod:`transfer.data.validate`) is stored under a key made
of what it read: the annotation files' paths, sizes and modification times, the image folders'
modification times (a folder's changes when files are added, removed or renamed in it), the
metadata it compared against and the checker's version. Touching or replacing any of them makes
the next check run again.

Where: ``$SSL_D2_TRANSFER_CACHE`` (``none`` turns the cache off), else
``$XDG_CACHE_HOME/ssl-d2-transfer/dataset-checks``, else ``~/.cache/ssl-d2-transfer/dataset-checks``:
one small json file per dataset version, written atomically; the newest :data:`MAX_ENTRIES` are kept.
A file that cannot be read or does not match its key counts as absent and is replaced; a cache
folder that cannot be written is skipped (the check just runs each time). Within one process the
results are also kept in memory, so a sweep parses each dataset once whatever its number of runs.
"""
import hashlib
import json
import os

from pretrain.common.fileio import write_json_atomic

__all__ = ["CACHE_ENV", "VERSION", "MAX_ENTRIES", "cache_dir", "file_stamp", "folder_stamp", "key_of", "lookup",
           "store", "clear_memory"]

CACHE_ENV = "SSL_D2_TRANSFER_CACHE"
VERSION = 1  # of the checks: a new check invalidates what older versions stored
MAX_ENTRIES = 256
_MEMORY = {}


def cache_dir():
    """The cache folder, or None when ``$SSL_D2_TRANSFER_CACHE`` is ``none``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return None if configured.lower() == "none" else os.path.expanduser(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ssl-d2-transfer", "dataset-checks")


def file_stamp(path):
    """``[path, size, mtime_ns]`` (size -1 for a file that is not there)."""
    try:
        st = os.stat(path)
        return [os.path.abspath(path), st.st_size, st.st_mtime_ns]
    except OSError:
        return [os.path.abspath(path), -1, 0]


def folder_stamp(path):
    """``[path, mtime_ns]`` of a folder (0 when it is not there)."""
    try:
        return [os.path.abspath(path), os.stat(path).st_mtime_ns]
    except OSError:
        return [os.path.abspath(path), 0]


def key_of(parts):
    """The digest of a json-able description of what a check read."""
    text = json.dumps({"version": VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _entry_path(folder, key):
    return os.path.join(folder, key[:40] + ".json")


def lookup(key):
    """The stored summary of ``key`` if its folders are unchanged since, else None."""
    if key in _MEMORY:
        summary, folders = _MEMORY[key]
    else:
        folder = cache_dir()
        if folder is None:
            return None
        try:
            with open(_entry_path(folder, key)) as f:
                entry = json.load(f)
            if entry.get("key") != key or not isinstance(entry.get("summary"), dict):
                return None
            summary, folders = entry["summary"], [list(s) for s in entry.get("folders", [])]
        except (OSError, ValueError, TypeError, AttributeError):
            return None  # absent or unreadable: the check runs again and replaces it
    if any(folder_stamp(path) != [os.path.abspath(path), mtime] for path, mtime in folders):
        return None
    _MEMORY[key] = (summary, folders)
    return summary


def store(key, summary, folders=()):
    """Keep ``summary`` under ``key`` with the stamps of the image ``folders`` it checked."""
    stamps = [folder_stamp(f) for f in dict.fromkeys(folders)]
    _MEMORY[key] = (summary, stamps)
    folder = cache_dir()
    if folder is None:
        return
    try:
        write_json_atomic(_entry_path(folder, key), {"key": key, "summary": summary, "folders": stamps}, indent=None)
        _prune(folder)
    except OSError:
        pass  # a read-only home: the check runs again next time


def _prune(folder):
    with os.scandir(folder) as it:
        entries = [e for e in it if e.name.endswith(".json") and e.is_file()]
    if len(entries) <= MAX_ENTRIES:
        return
    entries.sort(key=lambda e: e.stat().st_mtime_ns)
    for e in entries[:len(entries) - MAX_ENTRIES]:
        try:
            os.unlink(e.path)
        except OSError:
            pass


def clear_memory():
    """Forget the results kept in this process (the files stay)."""
    _MEMORY.clear()
