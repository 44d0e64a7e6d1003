"""pretrain.common.distributed: shuffle BN's gather/scatter in a real 2-process gloo group, MoCo's shared queue,
and the SLURM / torchrun environment parsing."""
import os

import pytest
import torch
import torch.multiprocessing as mp

from pretrain.common import distributed as du
from pretrain.common.paths import CONFIGS_DIR
CONFIGS = os.path.join(CONFIGS_DIR, "pretrain")


WORLD, LOCAL = 2, 5


class MeanColour:
    """Feature extractor stand-in for kNN feature extraction: the mean colour of each image."""

    def features(self, images, kind="embedding"):
        return images.float().mean(dim=(2, 3))


def colour_folder(root, n=7):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        os.makedirs(os.path.join(root, f"c{i % 3}"), exist_ok=True)
        pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(root, f"c{i % 3}", f"{i}.png"))


def _shuffle_worker(rank, port, out_dir):
    import torch.distributed as dist

    from pretrain.config import load_config
    from pretrain.methods import build_method

    du.init_process_group(du.DistInfo(rank, WORLD, rank, WORLD, "127.0.0.1", port), backend="gloo")
    try:
        torch.manual_seed(100 + rank)  # the permutation must come from rank 0 whatever the others draw
        # rows tagged with their global sample id: rank r holds ids r*LOCAL ... r*LOCAL + LOCAL - 1
        x = (torch.arange(LOCAL) + rank * LOCAL).float().view(LOCAL, 1).repeat(1, 3)
        shuffled, idx_unshuffle = du.batch_shuffle(x)
        restored = du.batch_unshuffle(shuffled, idx_unshuffle)
        # a per-sample function commutes with the shuffle: unshuffle(f(shuffle(x))) == f(x)
        f = lambda t: t * 3 + t ** 2  # noqa: E731
        commuted = du.batch_unshuffle(f(shuffled), idx_unshuffle)

        # MoCo: the same model on both ranks; eval-mode keys through shuffle BN equal direct keys (the
        # unshuffle returns every key to its own sample), and after a step both ranks hold the same queue
        # with the keys of all ranks in rank order
        cfg = load_config(f"{CONFIGS}/moco_v2_R_50.yaml",
                          ["MODEL.ARCH", "resnet18", "INPUT.SIZE", "32", "MOCO.K", "16", "MODEL.DIM", "8",
                           "MODEL.PRECISION", "fp32", "MODEL.CHANNELS_LAST", "False", "SOLVER.BATCH_SIZE", "8"])
        torch.manual_seed(0)
        model = build_method(cfg)
        g = torch.Generator().manual_seed(rank)
        imgs = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g)
        model.eval()
        keys_shuffled = model.keys(imgs)
        model.shuffle_bn = False
        keys_direct = model.keys(imgs)
        # a training step (shuffle BN off, so that each rank's keys can be computed here directly)
        import copy

        import torch.nn.functional as F

        model.train()
        key_encoder = copy.deepcopy(model.encoder_k).train()
        step_keys = F.normalize(key_encoder(model.images(imgs)), dim=1)
        out = model({"view1": imgs, "view2": imgs})
        model.shuffle_bn = True
        out["loss"].backward()
        model.on_step_end(0)
        # kNN feature extraction: shards of 7 images over 2 processes, gathered back in order
        from pretrain.data.images import ImageFolder
        from pretrain.training.knn import gather_features
        from pretrain.data.views import build_views

        folder = ImageFolder(os.path.join(out_dir, "images"), build_views(cfg, "eval"))
        feats, labels = gather_features(MeanColour(), folder, list(range(len(folder))), 2, 0, torch.device("cpu"))
        torch.save({"feats": feats, "labels": labels,
                    "x": x, "shuffled": shuffled, "restored": restored, "commuted": commuted, "fx": f(x),
                    "idx_unshuffle": idx_unshuffle, "keys_shuffled": keys_shuffled, "keys_direct": keys_direct,
                    "queue": model.queue.clone(), "ptr": model.queue_ptr.clone(), "step_keys": step_keys.detach()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("gloo")
    colour_folder(str(out / "images"))
    mp.start_processes(_shuffle_worker, args=(du.free_port(), str(out)), nprocs=WORLD, join=True,
                       start_method="spawn")
    results = [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]
    for r in results:
        r["path"] = str(out / "rank0.pt")
    return results


def test_shuffle_is_a_global_permutation(two_ranks):
    ids = torch.cat([r["shuffled"][:, 0] for r in two_ranks]).long()
    assert sorted(ids.tolist()) == list(range(WORLD * LOCAL))  # every sample exactly once
    # the same permutation on both ranks (broadcast from rank 0)
    assert torch.equal(two_ranks[0]["idx_unshuffle"], two_ranks[1]["idx_unshuffle"])
    assert ids.tolist() != list(range(WORLD * LOCAL))  # samples really moved
    # samples cross processes (what prevents BN statistics from leaking the positive)
    assert any(int(i) // LOCAL != 0 for i in two_ranks[0]["shuffled"][:, 0])


def test_unshuffle_restores_and_commutes(two_ranks):
    for r in two_ranks:
        assert torch.equal(r["restored"], r["x"])
        assert torch.equal(r["commuted"], r["fx"])


def test_moco_keys_and_shared_queue(two_ranks):
    for r in two_ranks:
        torch.testing.assert_close(r["keys_shuffled"], r["keys_direct"], rtol=1e-5, atol=1e-6)
    q0, q1 = two_ranks[0]["queue"], two_ranks[1]["queue"]
    assert torch.equal(q0, q1)
    assert int(two_ranks[0]["ptr"]) == int(two_ranks[1]["ptr"]) == 8
    torch.testing.assert_close(q0[:4], two_ranks[0]["step_keys"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(q0[4:8], two_ranks[1]["step_keys"], rtol=1e-4, atol=1e-4)


def test_knn_features_gathered_in_order(two_ranks):
    from pretrain.config import load_config
    from pretrain.data.images import ImageFolder
    from pretrain.data.views import build_views

    root = os.path.join(os.path.dirname(two_ranks[0]["path"]), "images")
    folder = ImageFolder(root, build_views(load_config(f"{CONFIGS}/moco_v2_R_50.yaml", ["INPUT.SIZE", "32"]), "eval"))
    direct = torch.stack([folder[i]["view1"].float().mean(dim=(1, 2)) for i in range(len(folder))])
    labels = torch.tensor([folder.samples[i][1] for i in range(len(folder))])
    for r in two_ranks:
        assert r["feats"].shape == (7, 3)
        torch.testing.assert_close(r["feats"], direct)
        assert torch.equal(r["labels"], labels)


def test_single_process_collectives_are_identity():
    x = torch.randn(4, 2)
    assert du.get_world_size() == 1
    assert torch.equal(du.all_gather_cat(x), x)
    shuffled, idx = du.batch_shuffle(x)
    assert torch.equal(du.batch_unshuffle(shuffled, idx), x)


def test_env_dist_info():
    assert du.env_dist_info({}) is None
    assert du.env_dist_info({"RANK": "0", "WORLD_SIZE": "1"}) is None
    info = du.env_dist_info({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
                             "MASTER_ADDR": "node7", "MASTER_PORT": "1234"})
    assert (info.rank, info.world_size, info.local_rank, info.master_addr, info.master_port) == (3, 8, 1, "node7", 1234)
    slurm = du.env_dist_info({"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
                              "SLURM_JOB_NODELIST": "gpu[012-013,020]", "SLURM_JOB_ID": "4242",
                              "SLURM_NTASKS_PER_NODE": "8(x2)"})
    assert (slurm.rank, slurm.world_size, slurm.local_rank, slurm.local_size) == (9, 16, 1, 8)
    assert slurm.master_addr == "gpu012" and slurm.master_port == 20000 + 4242
    assert du.first_slurm_host("cn01") == "cn01"
    assert du.first_slurm_host("a[7-9],b3") == "a7"


def _record_place(info, out_dir):
    import torch.distributed as dist

    du.init_process_group(info, backend="gloo")
    total = du.all_reduce_sum(torch.tensor([float(info.rank + 1)]))
    torch.save({"rank": info.rank, "world": info.world_size, "local": (info.local_rank, info.local_size),
                "ranks_sum": float(total)}, os.path.join(out_dir, f"rank{info.rank}.pt"))
    dist.destroy_process_group()


def test_launch_spawns_every_machines_workers_at_one_rendezvous(tmp_path):
    """Two "machines" (two launching threads here) of two workers each meet at the URL they are given."""
    import threading

    url = f"tcp://127.0.0.1:{du.free_port()}"
    machines = [threading.Thread(target=du.launch, args=(_record_place, (str(tmp_path),)),
                                 kwargs=dict(num_local=2, num_machines=2, machine_rank=m, url=url)) for m in (0, 1)]
    for t in machines:
        t.start()
    for t in machines:
        t.join(timeout=300)
    places = [torch.load(tmp_path / f"rank{r}.pt") for r in range(4)]
    assert [(p["rank"], p["world"], p["local"]) for p in places] == [(r, 4, (r % 2, 2)) for r in range(4)]
    assert all(p["ranks_sum"] == 1 + 2 + 3 + 4 for p in places)


def test_launch_needs_a_rendezvous_for_several_machines():
    with pytest.raises(ValueError, match="rendezvous URL"):
        du.launch(_record_place, args=("unused",), num_local=2, num_machines=2, machine_rank=0)
    assert du.DistInfo(0, 2, master_addr="node3", master_port=1234).init_method == "tcp://node3:1234"
    assert du.DistInfo(0, 2, url="file:///tmp/rdv").init_method == "file:///tmp/rdv"
