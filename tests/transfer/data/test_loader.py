"""transfer.data.loader: one index stream for the job, global batches, per-image augmentation; a process's
share of a batch is the same images, augmented the same way, as that place of a single process's batch."""
import itertools

import pytest
import torch

from transfer.data.loader import (SAMPLE_SEED_KEY, GlobalBatchSampler, GlobalIndexStream, SeededMapDataset,
                                  image_seed)


def _take(iterable, n):
    return list(itertools.islice(iter(iterable), n))


def test_index_stream_is_detectron2s_single_process_order():
    from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler

    assert _take(GlobalIndexStream(13, seed=7), 60) == _take(TrainingSampler(13, seed=7), 60)
    factors = torch.tensor([1.0, 2.5, 1.0, 3.2, 1.7, 1.0, 1.0])
    assert (_take(GlobalIndexStream(7, seed=3, repeat_factors=factors), 80)
            == _take(RepeatFactorTrainingSampler(factors, seed=3), 80))
    # a second iteration starts over
    stream = GlobalIndexStream(13, seed=7)
    assert _take(stream, 30) == _take(stream, 30)


@pytest.mark.parametrize("grouped", [False, True])
def test_shares_of_every_process_count_make_up_the_single_process_batch(grouped):
    size, batch, seed = 23, 8, 5
    groups = [i % 3 == 0 for i in range(size)] if grouped else None
    single = _take(GlobalBatchSampler(GlobalIndexStream(size, seed), batch, groups, seed), 12)
    for world in (2, 4, 8):
        shares = [_take(GlobalBatchSampler(GlobalIndexStream(size, seed), batch, groups, seed, rank, world), 12)
                  for rank in range(world)]
        for number, keys in enumerate(single):
            assert sum((share[number] for share in shares), []) == keys
    for number, keys in enumerate(single):
        assert [s for _, s in keys] == [image_seed(seed, number, place) for place in range(batch)]
        assert len({s for _, s in keys}) == batch
        if grouped:
            assert len({groups[i] for i, _ in keys}) == 1
    # resuming at batch 5 on 4 processes gives what the uninterrupted run gives from batch 5 on
    resumed = _take(GlobalBatchSampler(GlobalIndexStream(size, seed), batch, groups, seed, 1, 4, start_batch=5), 7)
    assert resumed == _take(GlobalBatchSampler(GlobalIndexStream(size, seed), batch, groups, seed, 1, 4), 12)[5:]
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        GlobalBatchSampler(GlobalIndexStream(size, seed), batch, groups, seed, 0, 3)


def test_an_images_augmentation_depends_on_its_seed_only():
    def mapper(d):
        return {"index": d["i"], "noise": torch.rand(3), "choice": int(torch.randint(0, 10**6, ()))}

    dataset = SeededMapDataset([{"i": i} for i in range(4)], mapper)
    first = dataset[(2, 11)]
    torch.rand(100)  # whatever happened in between
    dataset[(1, 12)]
    again = dataset[(2, 11)]
    assert torch.equal(first["noise"], again["noise"]) and first["choice"] == again["choice"]
    assert first[SAMPLE_SEED_KEY] == 11
    assert not torch.equal(dataset[(2, 13)]["noise"], first["noise"])


def test_a_process_loads_exactly_its_places_of_the_batch(synthetic_root, monkeypatch):
    """Real mapper (multi-scale resize, random flip) on the COCO-format synthetic data: rank r of 2 gets
    places 2r, 2r+1 of the single-process batch of 4, pixel for pixel."""
    from detectron2.utils import comm

    from transfer.data.loader import build_resumable_train_loader
    from transfer.training.config import TINY_OVERRIDES, get_transfer_cfg

    cfg = get_transfer_cfg()
    cfg.merge_from_list([*TINY_OVERRIDES, "DATASETS.TRAIN", "('coco_2017_train',)", "SOLVER.IMS_PER_BATCH", "4",
                         "INPUT.MIN_SIZE_TRAIN", "(96, 128, 160)", "SEED", "4"])
    single = _take(build_resumable_train_loader(cfg), 3)
    shares = []
    for rank in range(2):
        monkeypatch.setattr(comm, "get_world_size", lambda: 2)
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        shares.append(_take(build_resumable_train_loader(cfg), 3))
    for number in range(3):
        assert len(shares[0][number]) == len(shares[1][number]) == 2
        for a, b in zip(single[number], shares[0][number] + shares[1][number]):
            assert a["file_name"] == b["file_name"] and a[SAMPLE_SEED_KEY] == b[SAMPLE_SEED_KEY]
            assert torch.equal(a["image"], b["image"])
            assert torch.equal(a["instances"].gt_boxes.tensor, b["instances"].gt_boxes.tensor)
    sizes = {tuple(d["image"].shape[-2:]) for batch in single for d in batch}
    assert len(sizes) > 1  # the augmentation did vary the size


def test_training_set_holds_detectron2s_records_serialized(synthetic_root):
    """The records come back equal to Detectron2's dicts, as fresh copies; the repeat factors and aspect
    groups are Detectron2's; the process keeps no Python object per record (forked workers share one
    buffer, the collector has nothing to walk) and the collector runs again after the loading."""
    import gc

    from detectron2.data import get_detection_dataset_dicts
    from detectron2.data.samplers import RepeatFactorTrainingSampler

    from transfer.data.loader import load_training_set
    from transfer.training.config import TINY_OVERRIDES, get_transfer_cfg

    cfg = get_transfer_cfg()
    cfg.merge_from_list([*TINY_OVERRIDES, "DATASETS.TRAIN", "('coco_2017_train',)", "DATALOADER.SAMPLER_TRAIN",
                         "RepeatFactorTrainingSampler", "DATALOADER.REPEAT_THRESHOLD", "0.5"])
    dicts = get_detection_dataset_dicts(["coco_2017_train"], filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    gc.collect()
    before = len(gc.get_objects())
    training_set = load_training_set(cfg)
    tracked = len(gc.get_objects()) - before
    assert gc.isenabled()
    assert len(training_set) == len(dicts) > 0
    assert [training_set[i] for i in range(len(dicts))] == dicts
    training_set[0]["annotations"].clear()
    assert training_set[0] == dicts[0]  # each index gives a fresh copy
    assert torch.equal(training_set.factors,
                       RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.5))
    assert training_set.groups == [int(d["width"] > d["height"]) for d in dicts]
    per_record = sum(1 + len(d["annotations"]) for d in dicts)  # containers a list of dicts would keep
    assert tracked < per_record, (tracked, per_record)


def test_collector_paused_restores_the_collector_and_promotes_what_it_built():
    """Containers built within and still alive are in the oldest generation on the way out (no collection
    walks them young); objects someone else froze stay frozen; a collector that was off stays off."""
    import gc

    from transfer.data.coco_json import collector_paused

    assert gc.isenabled() and gc.get_freeze_count() == 0
    with collector_paused():
        assert not gc.isenabled()
        built = [[i] for i in range(100)]
    assert gc.isenabled() and gc.get_freeze_count() == 0
    oldest = {id(o) for o in gc.get_objects(generation=2)}
    assert all(id(x) in oldest for x in built) and id(built) in oldest
    del built
    others = [[i] for i in range(10)]
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with collector_paused():
            built = [[i] for i in range(100)]
        assert gc.get_freeze_count() >= frozen
        assert not {id(x) for x in others} & {id(o) for o in gc.get_objects()}  # still frozen
        young = {id(o) for o in gc.get_objects(generation=0)}
        assert all(id(x) in young for x in built)
    finally:
        gc.unfreeze()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # left as it was
    finally:
        gc.enable()
