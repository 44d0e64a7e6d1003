"""A training data loader that can start at any iteration and give exactly the batches it would have.

Detectron2's loader draws its shuffle seed at random, groups images by aspect ratio inside a buffer
and augments with the process-global RNG of whichever worker maps a sample, so a resumed run sees
other batches than the uninterrupted one. Here:

- the shuffle comes from Detectron2's own samplers, seeded with ``cfg.SEED``;
- batches (grouped by aspect ratio as Detectron2 does) are formed from indices alone, so starting
  at iteration ``k`` replays the grouping of the first ``k`` batches without loading an image;
- every sample is augmented under an RNG seeded from (seed, rank, batch number, slot), so it does not
  matter which worker maps it or whether the run was interrupted.

The result is a drop-in replacement of ``build_detection_train_loader(cfg)``: an infinite iterable of
lists of mapped dicts, ``cfg.SOLVER.IMS_PER_BATCH / world_size`` per list.
"""
import contextlib
import random

import numpy as np
import torch
from detectron2.data import DatasetMapper, get_detection_dataset_dicts
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler
from detectron2.utils import comm


@contextlib.contextmanager
def seeded_rngs(seed):
    """Seed python, numpy and torch RNGs for the body only; the previous states come back after."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class SeededMapDataset(torch.utils.data.Dataset):
    """Maps ``dataset[index]`` under an RNG seeded by the key the batch sampler gives with it."""

    def __init__(self, dicts, mapper):
        self._dicts, self._mapper = dicts, mapper

    def __len__(self):
        return len(self._dicts)

    def __getitem__(self, key):
        index, seed = key
        with seeded_rngs(seed):
            mapped = self._mapper(dict(self._dicts[index]))
        if mapped is None:
            raise RuntimeError(f"the dataset mapper rejected training sample {index} "
                               f"({self._dicts[index].get('file_name')})")
        return mapped


class ResumableBatchSampler:
    """Batches of (index, seed) keys from an infinite index stream, optionally aspect-ratio grouped.

    ``start_batch`` batches are formed and dropped first (indices only), so iteration ``k`` of a
    resumed run receives the batch it would have received.
    """

    def __init__(self, sampler, batch_size, aspect_groups, seed, rank, start_batch=0):
        self.sampler, self.batch_size, self.aspect_groups = sampler, batch_size, aspect_groups
        self.seed, self.rank, self.start_batch = seed, rank, start_batch

    def _index_batches(self):
        buckets = {}
        for index in self.sampler:
            group = 0 if self.aspect_groups is None else self.aspect_groups[index]
            bucket = buckets.setdefault(group, [])
            bucket.append(int(index))
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()

    def __iter__(self):
        for number, batch in enumerate(self._index_batches()):
            if number < self.start_batch:
                continue
            yield [(index, int(np.random.SeedSequence([self.seed, self.rank, number, slot]).generate_state(1)[0]))
                   for slot, index in enumerate(batch)]


def build_resumable_train_loader(cfg, start_iter=0, mapper=None):
    """The training loader of ``cfg`` positioned at iteration ``start_iter``."""
    dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0)
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    name = cfg.DATALOADER.SAMPLER_TRAIN
    if name == "TrainingSampler":
        sampler = TrainingSampler(len(dicts), seed=seed)
    elif name == "RepeatFactorTrainingSampler":
        factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            dicts, cfg.DATALOADER.REPEAT_THRESHOLD)
        sampler = RepeatFactorTrainingSampler(factors, seed=seed)
    else:
        raise ValueError(f"DATALOADER.SAMPLER_TRAIN {name} is not supported by the resumable loader")
    world_size = comm.get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world_size:
        raise ValueError(f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} is not divisible by "
                         f"{world_size} processes")
    groups = None
    if cfg.DATALOADER.ASPECT_RATIO_GROUPING:
        groups = [int(d["width"] > d["height"]) for d in dicts]
    batches = ResumableBatchSampler(sampler, cfg.SOLVER.IMS_PER_BATCH // world_size, groups, seed,
                                    comm.get_rank(), start_batch=start_iter)
    dataset = SeededMapDataset(dicts, mapper or DatasetMapper(cfg, True))
    num_workers = cfg.DATALOADER.NUM_WORKERS
    # its own generator: creating an iterator must not draw from the global torch RNG, whose state
    # the checkpoints carry
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=list,
        persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed))
