"""pretrain.data.images: folder scanning, bad images skipped and counted, the resumable sampler, draft decoding."""
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from pretrain.config import load_config
from pretrain.data.images import DataError, ImageFolder, ResumableDistributedSampler, build_loader, load_image, scan_folder
from pretrain.data.views import build_views
from transfer.data.synthetic import write_synthetic
from pretrain.common.paths import CONFIGS_DIR


CONFIGS = os.path.join(CONFIGS_DIR, "pretrain")


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain_data")
    write_synthetic(root, kinds=("imagenet",), num_images=4, seed=0)
    return os.path.join(root, "imagenet")


def views(size=32):
    return build_views(load_config(f"{CONFIGS}/moco_v2_R_50.yaml", ["INPUT.SIZE", str(size)]))


def test_scan_matches_torchvision_imagefolder(imagenet):
    from torchvision.datasets import ImageFolder as TVImageFolder

    classes, samples = scan_folder(os.path.join(imagenet, "train"))
    ref = TVImageFolder(os.path.join(imagenet, "train"))
    assert classes == ref.classes
    assert samples == [(p, c) for p, c in ref.samples]


def test_loose_images_form_one_class(tmp_path):
    for i in range(3):
        Image.new("RGB", (20, 20), (i * 50, 0, 0)).save(tmp_path / f"img{i}.png")
    ds = ImageFolder(str(tmp_path), views(16))
    assert ds.classes == ["."] and len(ds) == 3 and not ds.labeled
    os.makedirs(tmp_path / "nothing_here" / "class_a")
    with pytest.raises(DataError, match="no images"):
        scan_folder(str(tmp_path / "nothing_here"))


def test_bad_images_are_skipped_and_counted(imagenet, tmp_path):
    import shutil

    root = tmp_path / "train"
    shutil.copytree(os.path.join(imagenet, "train"), root)
    _, samples = scan_folder(str(root))
    paths = [p for p, _ in samples]
    truncated, garbage, empty = paths[1], paths[5], paths[6]
    data = open(truncated, "rb").read()
    open(truncated, "wb").write(data[: len(data) // 3])
    open(garbage, "wb").write(b"this is not a jpeg" * 10)
    open(empty, "wb").close()
    ds = ImageFolder(str(root), views(32), seed=0)
    assert len(ds) == len(paths)  # lazy: nothing is decoded up front

    s1 = ds[1]
    assert s1["index"] == 2 and s1["label"] == samples[2][1]  # the next readable image takes its place
    assert len(s1["bad"]) == 1 and s1["bad"][0].startswith(truncated)
    s5 = ds[5]
    assert s5["index"] == 7 and [b.split(" (")[0] for b in s5["bad"]] == [garbage, empty]
    assert ds[0]["bad"] == [] and ds[0]["index"] == 0

    loader = build_loader(ds, list(range(len(ds))), batch_size=8, num_workers=2, pin_memory=False,
                          drop_last=False, persistent=False)
    bad, n = [], 0
    for batch in loader:
        bad += batch["bad"]
        n += batch["view1"].shape[0]
        assert batch["view1"].dtype == torch.uint8
    assert n == len(paths)  # batches keep their size
    # every bad file is reported (a file right after another bad one is reported by both samples)
    assert set(b.split(" (")[0] for b in bad) == {truncated, garbage, empty}


def test_a_folder_of_only_bad_files_stops_with_one_line(tmp_path):
    os.makedirs(tmp_path / "a")
    for i in range(3):
        open(tmp_path / "a" / f"{i}.jpg", "wb").write(b"junk")
    ds = ImageFolder(str(tmp_path), views(16))
    with pytest.raises(DataError, match="unreadable images in a row"):
        ds[0]


def test_sampler_resumes_mid_epoch_and_partitions():
    data = list(range(50))
    for rank in range(2):
        full = ResumableDistributedSampler(data, 2, rank, seed=3)
        ref = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=3, drop_last=True)
        for epoch in (0, 4):
            full.set_epoch(epoch)
            ref.set_epoch(epoch)
            order = list(full)
            assert [i for i, _ in order] == list(ref) and all(e == epoch for _, e in order)
            full.set_start(7)
            assert list(full) == order[7:] and len(full) == len(order) - 7
            full.set_start(0)
    a = ResumableDistributedSampler(data, 2, 0, seed=3)
    b = ResumableDistributedSampler(data, 2, 1, seed=3)
    assert not set(i for i, _ in a) & set(i for i, _ in b)
    a.set_epoch(1)
    assert [i for i, _ in a] != [i for i, _ in ResumableDistributedSampler(data, 2, 0, seed=3)]


def test_draft_decoding_never_goes_below_the_requested_size(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "big.jpg"
    Image.fromarray(rng.integers(0, 255, (900, 1200, 3), dtype=np.uint8)).save(path, quality=90)
    full = load_image(str(path))
    assert full.size == (1200, 900)
    for need in (100, 200, 300, 450, 500):
        img = load_image(str(path), min_size=need)
        assert min(img.size) >= need
        assert min(img.size) < 2 * need or min(img.size) == 900  # reduced when a power of two fits
    assert min(load_image(str(path), min_size=100).size) < 225  # 1/4 or 1/8 scale decode
