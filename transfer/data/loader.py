"""A training data loader whose batches depend on the global batch only: resumable, and the same on any
number of processes.

Detectron2's loader draws its shuffle seed at random, deals the index stream out to the processes one by
one, groups images by aspect ratio inside each process's buffer and augments with the process-global RNG
of whichever worker maps a sample. A resumed run then sees other batches than the uninterrupted one, and
a run on 8 processes other batches than a run on 1 process with the same global batch. Here:

- one index stream for the whole job (:class:`GlobalIndexStream`: the order Detectron2's
  ``TrainingSampler`` or ``RepeatFactorTrainingSampler`` gives one process), seeded with ``cfg.SEED``;
  every process walks all of it;
- global batches of ``cfg.SOLVER.IMS_PER_BATCH`` indices (grouped by aspect ratio as Detectron2
  does, over the global batch) are formed from indices alone, so starting at iteration ``k`` replays
  the grouping of the first ``k`` batches without loading an image; process ``r`` of ``W`` takes
  places ``r*B/W`` to ``(r+1)*B/W - 1`` of each;
- every image is augmented under an RNG seeded from (seed, batch number, place in the global batch),
  so it matters neither which process or worker maps it nor whether the run was interrupted. The same
  number is handed to the model with the image (``dict[SAMPLE_SEED_KEY]``), from which
  :mod:`transfer.training.global_batch` seeds the RPN's and ROI heads' sampling of that image.

Process ``r`` of ``W`` therefore receives exactly the images, augmented exactly as, places ``r*B/W``
onwards of the batch a single process with the same ``IMS_PER_BATCH`` receives.

The result is a drop-in replacement of ``build_detection_train_loader(cfg)``: an infinite iterable of
lists of mapped dicts, ``cfg.SOLVER.IMS_PER_BATCH / world_size`` per list.
"""
import contextlib
import random

import numpy as np
import torch
from detectron2.data import DatasetFromList, DatasetMapper, get_detection_dataset_dicts
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.utils import comm

from pretrain.common.rng import seed_cpu
from transfer.data.coco_json import collector_paused

__all__ = ["SAMPLE_SEED_KEY", "seeded_rngs", "image_seed", "SeededMapDataset", "GlobalIndexStream",
           "GlobalBatchSampler", "TrainingSet", "load_training_set", "build_resumable_train_loader"]

# key of a mapped training dict that carries its image's seed (an int below 2**32) to the model
SAMPLE_SEED_KEY = "sample_seed"

SAMPLERS = ("TrainingSampler", "RepeatFactorTrainingSampler")


@contextlib.contextmanager
def seeded_rngs(seed):
    """Seed python, numpy and torch RNGs for the body only; the previous states come back after."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    seed_cpu(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def image_seed(seed, batch_number, place):
    """The seed of the image at ``place`` of global batch ``batch_number`` (an int below 2**32)."""
    return int(np.random.SeedSequence([seed, batch_number, place]).generate_state(1)[0])


class SeededMapDataset(torch.utils.data.Dataset):
    """Maps ``records[index]`` under an RNG seeded by the key the batch sampler gives with it, and
    passes that seed on to the model (``SAMPLE_SEED_KEY``). ``records``: a :class:`TrainingSet` (or any
    list of Detectron2's dicts)."""

    def __init__(self, records, mapper):
        self._records, self._mapper = records, mapper

    @property
    def records(self):
        """The dataset's records, shared, not copied."""
        return self._records

    def __len__(self):
        return len(self._records)

    def __getitem__(self, key):
        index, seed = key
        record = self._records[index]
        with seeded_rngs(seed):
            mapped = self._mapper(dict(record))
        if mapped is None:
            raise RuntimeError(f"the dataset mapper rejected training sample {index} ({record.get('file_name')})")
        mapped[SAMPLE_SEED_KEY] = seed
        return mapped


class GlobalIndexStream:
    """The job's infinite index stream: what Detectron2's sampler yields to a single process.

    ``repeat_factors`` None: ``TrainingSampler`` (a fresh permutation of ``range(size)`` per epoch);
    otherwise ``RepeatFactorTrainingSampler`` (per epoch, each index repeated by stochastic rounding of
    its factor, then permuted). Each iteration starts the stream from its beginning.
    """

    def __init__(self, size, seed, repeat_factors=None):
        self.size, self.seed = int(size), int(seed)
        self.repeat_factors = None if repeat_factors is None else torch.as_tensor(repeat_factors,
                                                                                    dtype=torch.float32)

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed)
        if self.repeat_factors is None:
            while True:
                yield from torch.randperm(self.size, generator=g).tolist()
        whole = torch.trunc(self.repeat_factors)
        fraction = self.repeat_factors - whole
        while True:
            repeats = whole + (torch.rand(len(fraction), generator=g) < fraction).float()
            epoch = torch.repeat_interleave(torch.arange(len(repeats)), repeats.long())
            yield from epoch[torch.randperm(len(epoch), generator=g)].tolist()


class GlobalBatchSampler:
    """This process's share of global batches of (index, seed) keys, optionally aspect-ratio grouped.

    Global batches of ``global_batch`` indices are formed from ``indices`` (grouped by
    ``aspect_groups[index]`` when given); process ``rank`` of ``world_size`` takes its consecutive
    ``global_batch / world_size`` places of each, keyed with :func:`image_seed` of the place. The first
    ``start_batch`` batches are formed and dropped (indices only), so iteration ``k`` of a resumed run
    receives the batch it would have received.
    """

    def __init__(self, indices, global_batch, aspect_groups, seed, rank=0, world_size=1, start_batch=0):
        if global_batch % world_size:
            raise ValueError(f"SOLVER.IMS_PER_BATCH {global_batch} is not divisible by {world_size} processes")
        self.indices, self.global_batch, self.aspect_groups = indices, global_batch, aspect_groups
        self.seed, self.rank, self.world_size, self.start_batch = seed, rank, world_size, start_batch

    def global_batches(self):
        """The infinite sequence of global batches (lists of dataset indices)."""
        buckets = {}
        for index in self.indices:
            group = 0 if self.aspect_groups is None else self.aspect_groups[index]
            bucket = buckets.setdefault(group, [])
            bucket.append(int(index))
            if len(bucket) == self.global_batch:
                yield bucket[:]
                bucket.clear()

    def __iter__(self):
        per_process = self.global_batch // self.world_size
        first = self.rank * per_process
        for number, batch in enumerate(self.global_batches()):
            if number < self.start_batch:
                continue
            yield [(batch[place], image_seed(self.seed, number, place))
                   for place in range(first, first + per_process)]


class TrainingSet:
    """A run's training records, loaded once and shared by its loaders (training, Precise BN, resume).

    The records are kept as Detectron2's own training loader keeps them: each dict pickled into one byte
    buffer (``DatasetFromList(serialize=True)``); indexing returns a fresh dict. Forked loader workers then
    share the buffer instead of copying a list of millions of Python objects page by page, and Python's
    cyclic collector has nothing of them to walk (with the dicts as objects, each full collection of a COCO
    train run walks them: seconds). ``factors`` (repeat factors, for ``RepeatFactorTrainingSampler``) and
    ``groups`` (aspect-ratio groups) are computed from the dicts before they are serialized."""

    def __init__(self, dicts, cfg):
        self.factors = None
        if cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler":
            self.factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
                dicts, cfg.DATALOADER.REPEAT_THRESHOLD)
        self.groups = [int(d["width"] > d["height"]) for d in dicts] if cfg.DATALOADER.ASPECT_RATIO_GROUPING \
            else None
        self._records = DatasetFromList(dicts, copy=False, serialize=True)

    def __len__(self):
        return len(self._records)

    def __getitem__(self, index):
        return self._records[index]


def _check_sampler(cfg):
    if cfg.DATALOADER.SAMPLER_TRAIN not in SAMPLERS:
        raise ValueError(f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN} is not supported by the "
                         "resumable loader")


def load_training_set(cfg):
    """Detectron2's loading of ``cfg.DATASETS.TRAIN`` (filtered as its training loader filters), as a
    :class:`TrainingSet`. Python's cyclic collector is paused meanwhile: the dicts, millions of containers,
    are serialized and freed before it runs again (Detectron2 leaves it running: its loading of COCO train
    takes about twice as long)."""
    _check_sampler(cfg)
    with collector_paused():
        dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0)
        return TrainingSet(dicts, cfg)


def build_resumable_train_loader(cfg, start_iter=0, mapper=None, training_set=None):
    """The training loader of ``cfg`` positioned at iteration ``start_iter``. ``training_set``: the
    :class:`TrainingSet` another loader of ``cfg`` holds (its ``dataset.records``), instead of loading it
    again."""
    _check_sampler(cfg)
    if training_set is None:
        training_set = load_training_set(cfg)
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    batches = GlobalBatchSampler(GlobalIndexStream(len(training_set), seed, training_set.factors),
                                 cfg.SOLVER.IMS_PER_BATCH, training_set.groups, seed, comm.get_rank(),
                                 comm.get_world_size(), start_batch=start_iter)
    dataset = SeededMapDataset(training_set, mapper or DatasetMapper(cfg, True))
    num_workers = cfg.DATALOADER.NUM_WORKERS
    # its own generator: creating an iterator must not draw from the global torch RNG, whose state
    # the checkpoints carry
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=list,
        persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed))
