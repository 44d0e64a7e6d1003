"""Version quirks of Detectron2, in one place, applied only where something is actually missing.

``import transfer`` calls :func:`apply` before any Detectron2 module is imported. On a source build of
Detectron2 with compiled ops, and with the libraries Detectron2 0.6 was written against, every fix
here is a no-op. On the pure-Python Detectron2 0.6 (see :mod:`transfer.runtime.install`) with numpy 2,
Pillow 10+ and setuptools 81+ it supplies, and only then:

- ``detectron2._C``: a stand-in whose ops raise a clear error naming the op; it answers the version
  queries ``default_setup`` makes, and Python introspection of dunder names raises AttributeError;
- ``detectron2.evaluation.fast_eval_api``: COCO evaluation through faster-coco-eval or pycocotools
  instead of the compiled fast path;
- numpy aliases removed in numpy 1.24 (``np.bool``, ``np.int``, ``np.float``, ...), which Detectron2
  0.6 and ``lvis`` 0.5.3 use as dtypes;
- ``PIL.Image.LINEAR`` (removed in Pillow 10);
- ``pkg_resources.resource_filename`` for ``detectron2.model_zoo`` (setuptools 81+ has no
  ``pkg_resources``).

Some fixes patch Detectron2 modules, when (and only if) those modules are imported and a probe shows
the problem:

- ``MapDataset``'s fallback for samples its mapper rejects calls ``random.sample`` on a set, which
  Python 3.11 refuses;
- ``DetectionCheckpointer`` reads ``.pth`` files with ``torch.load``, whose default became
  ``weights_only=True`` in torch 2.6, so checkpoints holding numpy arrays or scalars no longer load;
  numpy's array and scalar constructors are allowed for those loads (still ``weights_only``);
- ``create_ddp_model`` passes ``device_ids=[local_rank]``, which DistributedDataParallel rejects for a
  model on the CPU (multi-process CPU training with gloo); CPU models get ``device_ids=None``;
- ``DefaultTrainer`` of Detectron2 0.6 leaves the optimizer out of its checkpoints, so a resumed run
  restarts SGD momentum and runs its first iteration at the initial LR; its state now includes the
  inner trainer's (optimizer, grad scaler), as later Detectron2 versions do;
- the ``LRScheduler`` hook saves and restores a scheduler's state only for ``_LRScheduler``, which
  torch >= 2's schedulers no longer derive from, so a torch scheduler restarted from epoch 0 after a
  resume; it now saves any ``torch.optim.lr_scheduler.LRScheduler``.

Each fix records its name in :data:`APPLIED`; nothing else in the project patches Detectron2.
"""
import builtins
import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import io
import logging
import os
import random
import sys
import types
import warnings

APPLIED = []

_NUMPY_ALIASES = {"bool": builtins.bool, "int": builtins.int, "float": builtins.float,
                  "complex": builtins.complex, "object": builtins.object, "str": builtins.str}

_OP_FEATURES = (
    ("deform_conv", "deformable convolution"),
    ("rotated", "rotated boxes"),
    ("COCOeval", "the compiled COCO evaluation"),
    ("InstanceAnnotation", "the compiled COCO evaluation"),
)


class CompiledOpMissing(RuntimeError):
    """A Detectron2 op that needs the compiled extension was called on a pure-Python install."""


class _MissingCompiledModule(types.ModuleType):
    """Stands in for ``detectron2._C`` when Detectron2 was installed without compiled ops."""

    is_standin = True

    def get_compiler_version(self):
        return "none (pure-Python Detectron2, no compiled ops)"

    def get_cuda_version(self):
        return "none (pure-Python Detectron2, no compiled ops)"

    def has_cuda(self):
        return False

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        feature = next((f for key, f in _OP_FEATURES if key in name), "this operation")
        message = (f"detectron2 op '{name}' ({feature}) needs Detectron2's compiled extension, which "
                   "this pure-Python install lacks; build Detectron2 from source to use it")

        def missing_op(*args, **kwargs):
            raise CompiledOpMissing(message)

        missing_op.__name__ = name
        return missing_op


def _detectron2_dirs():
    """Directories of the detectron2 package, found without importing it (None if absent)."""
    try:
        spec = importlib.util.find_spec("detectron2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)


def has_compiled_ops():
    """True when the installed Detectron2 has its compiled ``_C`` extension."""
    current = sys.modules.get("detectron2._C")
    if current is not None:
        return not getattr(current, "is_standin", False)
    dirs = _detectron2_dirs()
    return bool(dirs) and importlib.machinery.PathFinder.find_spec("_C", dirs) is not None


def _fix_compiled_ops():
    if _detectron2_dirs() is None or has_compiled_ops():
        return
    module = _MissingCompiledModule("detectron2._C")
    module.__spec__ = importlib.machinery.ModuleSpec("detectron2._C", None,
                                                     origin="transfer.runtime.compat stand-in")
    sys.modules["detectron2._C"] = module
    APPLIED.append("detectron2._C")
    # detectron2.evaluation imports fast_eval_api, which needs _C; serve COCOeval_opt from a
    # backend that exists. Detectron2 then imports this module instead of its own.
    if "detectron2.evaluation.fast_eval_api" not in sys.modules:
        from transfer.runtime.coco_eval import coco_eval_class

        fast = types.ModuleType("detectron2.evaluation.fast_eval_api")
        fast.__doc__ = "COCOeval_opt without compiled ops (set by transfer.runtime.compat)"
        fast.COCOeval_opt = coco_eval_class()
        sys.modules[fast.__name__] = fast
        APPLIED.append("detectron2.evaluation.fast_eval_api")


def _fix_numpy():
    import numpy as np

    # vars(): hasattr would go through numpy's __getattr__, which warns for removed aliases
    missing = {k: v for k, v in _NUMPY_ALIASES.items() if k not in vars(np)}
    for name, value in missing.items():
        setattr(np, name, value)
    if missing:
        APPLIED.append("numpy aliases: " + ",".join(sorted(missing)))


def _fix_pil():
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR
        APPLIED.append("PIL.Image.LINEAR")


def _resource_filename(package_or_requirement, resource_name):
    import importlib.resources

    return str(importlib.resources.files(package_or_requirement).joinpath(resource_name))


def _resource_exists(package_or_requirement, resource_name):
    return os.path.exists(_resource_filename(package_or_requirement, resource_name))


def _fix_pkg_resources():
    if "pkg_resources" in sys.modules or importlib.util.find_spec("pkg_resources") is not None:
        return
    module = types.ModuleType("pkg_resources")
    module.__doc__ = "resource_filename for detectron2.model_zoo (set by transfer.runtime.compat)"
    module.resource_filename = _resource_filename
    module.resource_exists = _resource_exists
    module.__spec__ = importlib.machinery.ModuleSpec("pkg_resources", None,
                                                     origin="transfer.runtime.compat stand-in")
    sys.modules["pkg_resources"] = module
    APPLIED.append("pkg_resources")


# ------------------------------------------------------------------ fixes to Detectron2's own modules

def _python_refuses_sample_of_set():
    try:
        random.Random(0).sample({0, 1}, k=1)
    except TypeError:
        return True
    return False


def _fix_map_dataset(module):
    """MapDataset falls back to another index when its mapper returns None (Python 3.11 safe)."""
    MapDataset = module.MapDataset
    if getattr(MapDataset, "_fallback_fixed", False) or not _python_refuses_sample_of_set():
        return
    logger = module.logging.getLogger(module.__name__)

    def __getitem__(self, idx):
        # as Detectron2 0.6, but draws the fallback index from a sorted list, not from a set
        retries, current = 0, int(idx)
        while True:
            data = self._map_func(self._dataset[current])
            if data is not None:
                self._fallback_candidates.add(current)
                return data
            retries += 1
            self._fallback_candidates.discard(current)
            current = self._rng.choice(sorted(self._fallback_candidates))
            if retries >= 3:
                logger.warning(f"Failed to apply `_map_func` for idx: {idx}, retry count: {retries}")

    MapDataset.__getitem__ = __getitem__
    MapDataset._fallback_fixed = True
    APPLIED.append("MapDataset fallback (random.sample of a set)")


def _torch_load_refuses_numpy():
    import numpy as np
    import torch

    buffer = io.BytesIO()
    torch.save({"x": np.zeros(1)}, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer)
    except Exception:  # torch raises pickle.UnpicklingError for unlisted globals
        return hasattr(torch.serialization, "safe_globals")
    return False


@contextlib.contextmanager
def numpy_safe_torch_load():
    """Within this context, ``torch.load`` (weights_only) also accepts numpy arrays and scalars."""
    import torch

    if not hasattr(torch.serialization, "safe_globals"):
        yield
        return
    from pretrain.common.safe_load import numpy_pickle_globals

    with torch.serialization.safe_globals(numpy_pickle_globals()):
        yield


def _fix_checkpointer(module):
    Checkpointer = module.DetectionCheckpointer
    if getattr(Checkpointer, "_numpy_fixed", False) or not _torch_load_refuses_numpy():
        return
    original = Checkpointer._load_file

    def _load_file(self, filename):
        with numpy_safe_torch_load():
            return original(self, filename)

    Checkpointer._load_file = _load_file
    Checkpointer._numpy_fixed = True
    APPLIED.append("DetectionCheckpointer numpy in .pth")


def _fix_create_ddp_model(module):
    original = module.create_ddp_model
    if getattr(original, "_cpu_fixed", False):
        return

    def create_ddp_model(model, **kwargs):
        params = list(model.parameters())
        if params and params[0].device.type == "cpu":
            kwargs.setdefault("device_ids", None)
        return original(model, **kwargs)

    create_ddp_model._cpu_fixed = True
    create_ddp_model.__doc__ = original.__doc__
    module.create_ddp_model = create_ddp_model
    APPLIED.append("create_ddp_model on CPU")


def _fix_trainer_state(module):
    DefaultTrainer = module.DefaultTrainer
    if "state_dict" in vars(DefaultTrainer):  # this version saves the optimizer itself
        return
    TrainerBase = DefaultTrainer.__mro__[1]

    def state_dict(self):
        state = TrainerBase.state_dict(self)
        state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state):
        TrainerBase.load_state_dict(self, state)
        if "_trainer" in state:
            self._trainer.load_state_dict(state["_trainer"])

    DefaultTrainer.state_dict, DefaultTrainer.load_state_dict = state_dict, load_state_dict
    APPLIED.append("DefaultTrainer optimizer in checkpoints")


def _fix_engine_defaults(module):
    _fix_create_ddp_model(module)
    _fix_trainer_state(module)


def _scheduler_state_is_dropped(LRScheduler):
    """Detectron2 0.6 saves a scheduler's state only for ``_LRScheduler``: torch >= 2's schedulers derive
    from ``LRScheduler`` instead, so a user's torch scheduler restarted from epoch 0 after ``--resume``."""
    import torch

    base = getattr(torch.optim.lr_scheduler, "LRScheduler", None)
    if base is None or base is torch.optim.lr_scheduler._LRScheduler:
        return False
    probe = torch.optim.lr_scheduler.StepLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), 1)
    hook = LRScheduler.__new__(LRScheduler)
    hook._scheduler = probe
    return hook.state_dict() == {}


def _fix_lr_scheduler_hook(module):
    LRScheduler = module.LRScheduler
    if not _scheduler_state_is_dropped(LRScheduler):
        return
    import torch

    base = torch.optim.lr_scheduler.LRScheduler

    def state_dict(self):
        return self.scheduler.state_dict() if isinstance(self.scheduler, base) else {}

    def load_state_dict(self, state_dict):
        if isinstance(self.scheduler, base):
            logging.getLogger(module.__name__).info("Loading scheduler from state_dict ...")
            self.scheduler.load_state_dict(state_dict)

    LRScheduler.state_dict, LRScheduler.load_state_dict = state_dict, load_state_dict
    APPLIED.append("LRScheduler hook state of torch>=2 schedulers")


_MODULE_FIXES = {
    "detectron2.data.common": _fix_map_dataset,
    "detectron2.checkpoint.detection_checkpoint": _fix_checkpointer,
    "detectron2.engine.defaults": _fix_engine_defaults,
    "detectron2.engine.hooks": _fix_lr_scheduler_hook,
}


class _FixingLoader(importlib.abc.Loader):
    def __init__(self, loader, fix):
        self._loader, self._fix = loader, fix

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._fix(module)


class _PostImportFixer(importlib.abc.MetaPathFinder):
    """Runs a fix on a Detectron2 module right after it is imported, wherever it is imported from."""

    def find_spec(self, name, path, target=None):
        fix = _MODULE_FIXES.get(name)
        if fix is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _FixingLoader(spec.loader, fix)
                return spec
        return None


def _install_module_fixes():
    for name, fix in _MODULE_FIXES.items():
        if name in sys.modules:
            fix(sys.modules[name])
    if not any(isinstance(f, _PostImportFixer) for f in sys.meta_path):
        sys.meta_path.insert(0, _PostImportFixer())


_DONE = False


def apply():
    """Apply every fix that is needed; idempotent."""
    global _DONE
    if _DONE:
        return
    _DONE = True
    # Detectron2 0.6 scripts a few helpers with torch.jit at import, which torch 2.10+ deprecates
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    _fix_numpy()
    _fix_pil()
    _fix_pkg_resources()
    _fix_compiled_ops()
    _install_module_fixes()
