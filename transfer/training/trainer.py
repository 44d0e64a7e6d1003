"""Training and evaluation of a transfer run on Detectron2's engine.

:class:`TransferTrainer` is Detectron2's ``DefaultTrainer`` with the evaluators of the benchmark's
datasets (COCO boxes/masks/keypoints, LVIS, VOC), precise BN whose statistics are averaged over all
processes, and checkpoints that carry the RNG states, so that a resumed run continues as the
uninterrupted one would. Its loader (:mod:`transfer.data.loader`) and model
(:mod:`transfer.training.global_batch`) make a training step depend on the global batch only, so that
a run on N processes equals a run on one process with the same batch (:mod:`transfer.training.invariance`
checks it). :mod:`transfer.training.train_net` starts its processes.
"""
import logging
import os
import random

import numpy as np
import torch
import torch.distributed as dist
from detectron2.data import DatasetMapper, MetadataCatalog, build_detection_test_loader
from detectron2.engine import DefaultTrainer, hooks
from detectron2.evaluation import COCOEvaluator, LVISEvaluator, PascalVOCDetectionEvaluator
from detectron2.utils import comm
from fvcore.nn.precise_bn import get_bn_modules

from transfer.runtime.coco_eval import has_faster_coco_eval
from transfer.data.coco_json import collector_paused
from transfer.data.loader import build_resumable_train_loader
from transfer.data.unreadable import SkippingLoader, SkipUnreadable, StopOnUnreadable
from transfer.training.checkpointer import make_safe
from transfer.training.global_batch import make_global_batch_model
from pretrain.common.fileio import write_json_atomic

logger = logging.getLogger(__name__)


def use_fastest_coco_eval():
    """Route Detectron2's fast COCO evaluation through faster-coco-eval when it is installed.

    Identical numbers to pycocotools (tested), several times faster on large sets.
    """
    if has_faster_coco_eval():
        import detectron2.evaluation.coco_evaluation as coco_evaluation
        from transfer.runtime.coco_eval import coco_eval_class

        coco_evaluation.COCOeval_opt = coco_eval_class()


class VOCEvaluator(PascalVOCDetectionEvaluator):
    """Detectron2's VOC evaluator that also keeps the predictions (``voc_results.json``)."""

    def __init__(self, dataset_name, output_dir):
        super().__init__(dataset_name)
        self._output_dir = output_dir

    def evaluate(self):
        gathered = comm.gather(self._predictions, dst=0)
        if comm.is_main_process() and self._output_dir:
            merged = {}
            for predictions in gathered:
                for cls_id, lines in predictions.items():
                    merged.setdefault(self._class_names[cls_id], []).extend(lines)
            os.makedirs(self._output_dir, exist_ok=True)
            # per class: "image_id score xmin ymin xmax ymax" lines, as Detectron2's VOC evaluation reads them
            write_json_atomic(os.path.join(self._output_dir, "voc_results.json"), merged)
        return super().evaluate()


class PreciseBNAllProcesses(hooks.PreciseBN):
    """Precise BN whose recomputed statistics are the average over all processes.

    Detectron2's hook recomputes BN statistics on each process's own batches; BN layers that are not
    synchronised would then hold one rank's numbers. Here every BN buffer is all-reduced afterwards.
    """

    def update_stats(self):
        super().update_stats()
        if comm.get_world_size() == 1 or self._disabled:
            return
        for bn in get_bn_modules(self._model):
            for buffer in (bn.running_mean, bn.running_var):
                dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                buffer /= comm.get_world_size()


class RNGStateHook(hooks.HookBase):
    """Keeps every process's RNG states in the checkpoints and restores them on resume.

    Registered before the checkpointer: at each checkpointing iteration all processes send their
    states to the main process, whose checkpointer saves them; on resume each process takes its own.
    """

    def __init__(self, checkpoint_period):
        self._period = checkpoint_period
        self._states = None

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if (self._period > 0 and next_iter % self._period == 0) or next_iter >= self.trainer.max_iter:
            self._states = comm.all_gather(_rng_state())

    def state_dict(self):
        return {"per_rank": self._states if self._states is not None else [_rng_state()]}

    def load_state_dict(self, state):
        states = state["per_rank"]
        if len(states) != comm.get_world_size():
            logger.warning(f"checkpoint has RNG states of {len(states)} processes, this run has "
                           f"{comm.get_world_size()}; the resumed run will not repeat the original exactly")
        _set_rng_state(states[comm.get_rank() % len(states)])


def _rng_state():
    """This process's RNG states as plain containers and tensors (loadable with weights_only)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                       "gauss": py_gauss}}


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))


class TransferTrainer(DefaultTrainer):
    def __init__(self, cfg):
        super().__init__(cfg)
        make_safe(self.checkpointer)  # safe reads, atomic writes; train_net sets trust_pickle

    @classmethod
    def build_model(cls, cfg):
        # a training step that depends on the global batch only, not on the number of processes
        return make_global_batch_model(super().build_model(cfg), cfg)

    @classmethod
    def build_train_loader(cls, cfg, start_iter=0, training_set=None):
        # an image that cannot be read is skipped with a warning (transfer.data.unreadable)
        mapper = SkipUnreadable(DatasetMapper(cfg, True))
        return SkippingLoader(build_resumable_train_loader(cfg, start_iter, mapper=mapper,
                                                            training_set=training_set))

    def _loaded_training_set(self):
        """The training set as the trainer's loader holds it: other loaders share it instead of loading
        the annotation file again (tens of seconds and gigabytes for COCO or LVIS)."""
        return self._trainer.data_loader.dataset.records

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        # an image that cannot be read stops the evaluation with one line naming it
        with collector_paused():  # Detectron2 loads the test set and serializes it (the collector has nothing to walk)
            return build_detection_test_loader(cfg, dataset_name, mapper=StopOnUnreadable(DatasetMapper(cfg, False)))

    def run_step(self):
        try:
            super().run_step()
        except FloatingPointError as e:  # Detectron2 raises it for NaN/inf losses, boxes or scores
            reason = str(e).splitlines()[0].rstrip(". !")
            raise FloatingPointError(f"non-finite values at iteration {self.iter}: {reason}.") from None

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if self.start_iter > 0:
            # the loader built in __init__ starts at iteration 0; continue where the checkpoint stopped
            loader = self.build_train_loader(self.cfg, self.start_iter, self._loaded_training_set())
            self._trainer.data_loader = loader
            self._trainer._data_loader_iter = iter(loader)
            if hasattr(self._trainer, "_data_loader_iter_obj"):  # newer Detectron2 creates it lazily
                self._trainer._data_loader_iter_obj = None

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
        if evaluator_type == "coco":
            use_fastest_coco_eval()
            # the tasks the model has (Detectron2 would guess them from the predictions, and a model
            # that predicts nothing would then report boxes only)
            tasks = ("bbox",) + (("segm",) if cfg.MODEL.MASK_ON else ()) + (("keypoints",) if cfg.MODEL.KEYPOINT_ON else ())
            return COCOEvaluator(dataset_name, tasks=tasks, output_dir=output_folder)
        if evaluator_type == "lvis":
            return LVISEvaluator(dataset_name, output_dir=output_folder)
        if evaluator_type == "pascal_voc":
            return VOCEvaluator(dataset_name, output_folder)
        raise ValueError(f"no evaluator for dataset {dataset_name} (evaluator_type {evaluator_type!r})")

    def build_hooks(self):
        cfg = self.cfg
        precise_bn = cfg.TEST.PRECISE_BN.ENABLED and bool(get_bn_modules(self.model))
        if precise_bn:  # Detectron2 would build (and load the training set for) a PreciseBN hook we replace
            self.cfg = cfg.clone()
            self.cfg.defrost()
            self.cfg.TEST.PRECISE_BN.ENABLED = False
            self.cfg.freeze()
        try:
            built = super().build_hooks()
        finally:
            self.cfg = cfg
        # before the checkpointer (main process only) and the evaluation, at the same place in every process
        position = next((i for i, h in enumerate(built)
                         if isinstance(h, (hooks.PeriodicCheckpointer, hooks.EvalHook))), len(built))
        if precise_bn:  # where Detectron2 puts it; its own loader, on the training set already loaded
            built.insert(position, PreciseBNAllProcesses(
                cfg.TEST.EVAL_PERIOD, self.model, self.build_train_loader(cfg, 0, self._loaded_training_set()),
                cfg.TEST.PRECISE_BN.NUM_ITER))
            position += 1
        # a hook with state: the trainer's checkpoints hold it (TrainerBase.state_dict saves hooks' states)
        built.insert(position, RNGStateHook(cfg.SOLVER.CHECKPOINT_PERIOD))
        return built
