"""Checkpoint files: read them without running untrusted code, write them atomically.

:func:`read_checkpoint` opens the files SSL codebases and Detectron2 write, choosing the reader from the
file's first bytes (so a ``.pkl`` that is really a ``torch.save`` zip still opens):

- ``torch.save`` files (``.pth``, ``.pth.tar``, ``.pt``, ``.ckpt``, ...): ``torch.load(map_location="cpu",
  weights_only=True)``, with numpy arrays, dtypes and scalars allowed besides torch's own safe types;
- ``.safetensors``: the ``safetensors`` package (never executes code);
- ``.pkl`` (Detectron2 / Caffe2 model zoo pickles): a restricted unpickler that builds only numpy arrays,
  dtypes, numpy scalars and plain containers.

A file that needs full unpickling (an ``argparse.Namespace``, an OmegaConf node, a torch tensor inside a
plain pickle, ...) raises :class:`CheckpointError` naming ``--trust-pickle``; with ``trust_pickle=True``
it is read with ``torch.load(weights_only=False)`` / ``pickle.load``, which can run code from the file.

Every failure a user can cause (missing, empty, truncated or corrupt file) raises
:class:`CheckpointError` with a one-line message that names the file.
"""
import builtins
import hashlib
import os
import pickle
import re

import numpy as np
import torch


__all__ = ["CheckpointError", "TRUST_HINT", "read_checkpoint", "sha256_file", "dump_pickle",
           "numpy_pickle_globals"]

_ZIP_MAGIC = b"PK\x03\x04"
_SAFETENSORS_SUFFIX = ".safetensors"

# Messages of torch's weights-only unpickler that mean "this file needs full unpickling", as opposed to
# "this file is damaged".
_UNSAFE_MARKERS = ("Unsupported global", "unsupported GLOBAL", "Can only create new object",
                   "Can only build", "Trying to call reduce")


class CheckpointError(Exception):
    """A checkpoint file cannot be read; the message is one line naming the file."""


def numpy_pickle_globals():
    """(object, 'module.name') pairs numpy pickles refer to, under numpy 1 and numpy 2 names."""
    core = getattr(np, "_core", None) or np.core
    pairs = []
    for module in ("numpy.core", "numpy._core"):
        pairs += [(core.multiarray._reconstruct, f"{module}.multiarray._reconstruct"),
                  (core.multiarray.scalar, f"{module}.multiarray.scalar")]
        if hasattr(core.numeric, "_frombuffer"):
            pairs.append((core.numeric._frombuffer, f"{module}.numeric._frombuffer"))
    pairs += [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:  # numpy >= 1.25 builds dtypes as instances of numpy.dtypes.*DType
        pairs += [(getattr(dtypes, n), f"numpy.dtypes.{n}") for n in dir(dtypes) if n.endswith("DType")]
    return pairs


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dtypes, scalars and plain containers; refuses every other global."""

    _allowed = None

    @classmethod
    def allowed(cls):
        if cls._allowed is None:
            import codecs
            import collections

            table = {name: obj for obj, name in numpy_pickle_globals()}
            table["collections.OrderedDict"] = collections.OrderedDict
            table["_codecs.encode"] = codecs.encode  # bytes in protocol-2 pickles written by Python 3
            for name in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool",
                         "str", "bytes", "bytearray", "slice"):
                table[f"builtins.{name}"] = getattr(builtins, name)
                table[f"__builtin__.{name}"] = table[f"builtins.{name}"]  # Python 2 pickles
            cls._allowed = table
        return cls._allowed

    def find_class(self, module, name):
        obj = self.allowed().get(f"{module}.{name}")
        if obj is None:
            raise _ForbiddenGlobal(f"{module}.{name}")
        return obj


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


#: the end of the refusal of a file that needs full unpickling (commands that read files name their flag)
TRUST_HINT = "pass --trust-pickle if you trust the file's source"


def _needs_trust(path, what):
    return CheckpointError(f"{path}: needs full unpickling (it stores {what}), which can run arbitrary code; {TRUST_HINT}")


def _corrupt(path, exc):
    text = str(exc).strip()
    reason = text.splitlines()[0].split(". ")[0] if text else ""
    reason = re.sub(r"\s+", " ", reason)
    if len(reason) < 12:  # bare KeyError('101') and the like: say what kind of failure it was
        reason = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
    if len(reason) > 160:
        reason = reason[:157] + "..."
    return CheckpointError(f"{path}: cannot read the checkpoint (truncated or corrupt file?): {reason}")


def _torch_load(path, trust_pickle):
    if trust_pickle:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any failure of a damaged file is reported as such
            raise _corrupt(path, e) from None
    try:
        with torch.serialization.safe_globals(numpy_pickle_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        message = str(e)
        if any(marker in message for marker in _UNSAFE_MARKERS):
            found = re.search(r"GLOBAL (\S+)", message) or re.search(r"got <class '([^']+)'>", message)
            what = found.group(1) if found else "Python objects beyond tensors and containers"
            raise _needs_trust(path, what) from None
        raise _corrupt(path, e) from None
    except Exception as e:  # noqa: BLE001
        raise _corrupt(path, e) from None


def _pickle_load(path, trust_pickle):
    try:
        with open(path, "rb") as f:
            if trust_pickle:
                return pickle.load(f, encoding="latin1")
            return _RestrictedUnpickler(f, encoding="latin1").load()
    except _ForbiddenGlobal as e:
        raise _needs_trust(path, str(e)) from None
    except Exception as e:  # noqa: BLE001
        raise _corrupt(path, e) from None


def _safetensors_load(path):
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends
        raise _corrupt(path, e) from None


def _looks_like_safetensors(head):
    if len(head) < 10:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n < (1 << 32) and head[8:9] == b"{"


def read_checkpoint(path, *, trust_pickle=False):
    """Load a checkpoint file into Python objects (tensors or numpy arrays in nested containers).

    Raises :class:`CheckpointError` for a missing, empty, damaged or unsafe file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot open: {e.strerror or e}") from None
    if not head:
        raise CheckpointError(f"{path}: file is empty")
    if path.endswith(_SAFETENSORS_SUFFIX) or _looks_like_safetensors(head):
        return _safetensors_load(path)
    if head.startswith(_ZIP_MAGIC):
        return _torch_load(path, trust_pickle)
    if path.endswith(".pkl"):
        return _pickle_load(path, trust_pickle)
    return _torch_load(path, trust_pickle)  # legacy (pre-1.6) torch.save format


def sha256_file(path, chunk=1 << 22):
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def dump_pickle(obj, path):
    """``pickle.dump`` to ``path`` (protocol 4: readable by Python >= 3.4 and by Detectron2)."""
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)
