"""The memory-bank methods IR, BALL, ANN, LA, BALL+ and ANN+ (pretrain.methods.ir/ball/ann/la): bank update,
losses against direct float64 computations written out here, the shared bank of a 2-process gloo group, and
tiny end-to-end runs of pretrain.training.train (checkpoint, exact resume of bank and clusters, conversion)."""
import copy
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from pretrain.common import distributed as du
from pretrain.config import load_config
from pretrain.methods.memory_bank import MemoryBank
from pretrain.methods import METHODS, build_method, get_method_class
from pretrain.methods.negatives import ClusterSets
from pretrain.common.paths import REPO_ROOT

REPO = REPO_ROOT
CONFIGS = os.path.join(REPO, "configs", "pretrain")
BANK_METHODS = ("ir", "ball", "ann", "la", "ball_plus", "ann_plus")
N = 20  # bank entries of the unit tests


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny_cfg(method, *opts):
    return load_config(f"{CONFIGS}/{method}_R_18.yaml",
                       ["MODEL.ARCH", "resnet18", "INPUT.SIZE", "16", "MODEL.DIM", "8", "MODEL.PRECISION", "fp32",
                        "MODEL.CHANNELS_LAST", "False", "SOLVER.BATCH_SIZE", "4", "BANK.NUM_NEGATIVES", "6",
                        "BALL.NEIGHBOURS", "5", "CLUSTER.K", "3", "CLUSTER.RUNS", "2", "BANK.BACKEND", "torch",
                        "SEED", "0", *opts])


def images(n, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def normalised(x, cfg):
    mean = torch.tensor(cfg.INPUT.PIXEL_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(cfg.INPUT.PIXEL_STD).view(1, 3, 1, 1) * 255
    return (x.float() - mean) / std


def build(method, *opts, ipe=5, max_iter=10):
    cfg = tiny_cfg(method, *opts)
    get_method_class(method).check_config(cfg)
    torch.manual_seed(0)
    model = build_method(cfg, num_train_images=N).train()
    model.on_train_start({"iters_per_epoch": ipe, "max_iter": max_iter, "start_iter": 0, "world_size": 1,
                          "num_train_images": N})
    return cfg, model


def record(sampler):
    """Keep what ``sampler.sample`` returns (the negatives the loss used) in ``sampler.calls``."""
    sampler.calls = []
    original = sampler.sample

    def sample(*args):
        out = original(*args)
        sampler.calls.append(tuple(t.clone() for t in out))
        return out

    sampler.sample = sample
    return sampler


def embeddings(model, cfg, batch):
    """What the method's encoder computes for view1, from a copy of it (train-mode BN), float64, normalised."""
    enc = copy.deepcopy(model.encoder)
    with torch.no_grad():
        return F.normalize(enc(normalised(batch["view1"], cfg)).double(), dim=1)


def logsumexp(values):
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def direct_infonce(f, memory, indices, negatives, t):
    """-log e^{s_i} / (e^{s_i} + sum_{j in negatives[b]} e^{s_j}), s = f.M / t, averaged (lists per row)."""
    total = 0.0
    for b, i in enumerate(indices):
        pos = float(f[b] @ memory[i]) / t
        negs = [float(f[b] @ memory[j]) / t for j in negatives[b]]
        total += logsumexp([pos] + negs) - pos
    return total / len(indices)


def brute_ball(query, memory, i, size):
    sims = sorted(((float(query @ memory[j]), j) for j in range(memory.shape[0]) if j != i), key=lambda s: -s[0])
    return [j for _, j in sims[:size]]


def close_set(assignments, i):
    return {j for j in range(assignments.shape[1]) for r in range(assignments.shape[0])
            if int(assignments[r, j]) == int(assignments[r, i])}


# --------------------------------------------------------------------------------------------- registry, config
def test_registry_and_annealing_flags():
    from pretrain.methods.ann import Ann, AnnPlus
    from pretrain.methods.ball import Ball, BallPlus
    from pretrain.methods.ir import IR
    from pretrain.methods.la import LocalAggregation

    classes = {"ir": IR, "ball": Ball, "ann": Ann, "la": LocalAggregation, "ball_plus": BallPlus, "ann_plus": AnnPlus}
    for name, cls in classes.items():
        assert name in METHODS and get_method_class(name) is cls and cls.loss_form == "bank"
    # the + variants anneal whatever BALL.ANNEAL / CLUSTER.ANNEAL say; the plain ones follow the keys
    assert build("ball_plus", "BALL.ANNEAL", "False")[1].sampler.anneal
    ann_plus = build("ann_plus", "BALL.ANNEAL", "False", "CLUSTER.ANNEAL", "False")[1].sampler
    assert ann_plus.anneal and ann_plus.anneal_close
    assert not build("ball")[1].sampler.anneal and build("ball", "BALL.ANNEAL", "True")[1].sampler.anneal
    ann = build("ann")[1].sampler
    assert not ann.anneal and not ann.anneal_close
    # one encoder named "encoder" (the converter's layout) and the bank in the state dict
    sd = build("ir")[1].state_dict()
    assert "encoder.conv1.weight" in sd and "encoder.fc.weight" in sd and sd["bank.memory"].shape == (N, 8)
    assert not any(k.startswith("encoder_q") for k in sd)


@pytest.mark.parametrize("method, opts, key", [
    ("ball", ["BANK.LOSS", "nce"], "BANK.LOSS"),
    ("ir", ["BANK.LOSS", "hinge"], "BANK.LOSS"),
    ("ir", ["BANK.T", "0.0"], "BANK.T"),
    ("ir", ["BANK.MOMENTUM", "1.0"], "BANK.MOMENTUM"),
    ("ir", ["BANK.NUM_NEGATIVES", "0"], "BANK.NUM_NEGATIVES"),
    ("ir", ["BANK.BACKEND", "annoy"], "BANK.BACKEND"),
    ("ir", ["INPUT.NUM_VIEWS", "0"], "INPUT.NUM_VIEWS"),
    ("ball", ["BALL.NEIGHBOURS", "0"], "BALL.NEIGHBOURS"),
    ("ball", ["BALL.FRACTION", "1.5"], "BALL.FRACTION"),
    ("ball_plus", ["BALL.ANNEAL_SCHEDULE", "step"], "BALL.ANNEAL_SCHEDULE"),
    ("ball_plus", ["BALL.ANNEAL_EPOCHS", "(5.0, 2.0)"], "BALL.ANNEAL_EPOCHS"),
    ("ball_plus", ["BALL.ANNEAL_START", "0.0"], "BALL.ANNEAL_START"),
    ("ann", ["CLUSTER.K", "0"], "CLUSTER.K"),
    ("ann_plus", ["CLUSTER.RUNS", "0"], "CLUSTER.RUNS"),
    ("la", ["LA.IR_EPOCHS", "-1"], "LA.IR_EPOCHS"),
    ("la", ["BALL.ANNEAL", "True"], "BALL.ANNEAL"),
])
def test_check_config_names_the_key(method, opts, key):
    cfg = tiny_cfg(method, *opts)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")) as err:
        get_method_class(method).check_config(cfg)
    assert "\n" not in str(err.value)


def test_configs_follow_the_paper():
    for name in BANK_METHODS:
        for suffix in ("", "_cifar"):
            path = os.path.join(CONFIGS, f"{name}_R_18{suffix}.yaml")
            text = open(path).read()
            assert text.startswith("#") and "Wu et al." in text and "B.3" in text and "Table 2" in text
            cfg = load_config(path, ["DATA.ROOT", "/data", "SOLVER.MAX_ITER", "7", "MODEL.ARCH", "resnet50",
                                     "SOLVER.BATCH_SIZE", "64", "INPUT.SIZE", "96"])
            assert cfg.MODEL.METHOD == name and cfg.SOLVER.MAX_ITER == 7 and cfg.INPUT.SIZE == 96
            cfg = load_config(path)
            assert (cfg.MODEL.ARCH, cfg.MODEL.DIM, cfg.MODEL.HEAD) == ("resnet18", 128, "linear")
            assert (cfg.SOLVER.BATCH_SIZE, cfg.SOLVER.BASE_LR, cfg.SOLVER.MOMENTUM, cfg.SOLVER.WEIGHT_DECAY) == \
                (256, 0.03, 0.9, 1e-4)
            assert (cfg.BANK.T, cfg.BANK.MOMENTUM, cfg.BANK.NUM_NEGATIVES, cfg.BANK.LOSS) == \
                (0.07, 0.5, 4096, "infonce")
            assert (cfg.BALL.NEIGHBOURS, cfg.CLUSTER.RUNS) == (4096, 10)
            assert cfg.CLUSTER.K == (300 if suffix else 30000) and cfg.INPUT.SIZE == (32 if suffix else 224)
            assert (cfg.INPUT.VIEWS, cfg.INPUT.NUM_VIEWS) == ("moco_v1", 1)
            assert (cfg.SOLVER.LR_SCHEDULER, cfg.SOLVER.PLATEAU_PATIENCE, cfg.SOLVER.PLATEAU_DROPS, cfg.KNN.PERIOD) \
                == ("plateau", 10, 2, 1)
            assert cfg.BALL.ANNEAL == name.endswith("_plus") and cfg.CLUSTER.ANNEAL == (name == "ann_plus")
            assert cfg.LA.IR_EPOCHS == 10


# --------------------------------------------------------------------------------------------- bank update
def test_memory_bank_update_formula():
    torch.manual_seed(0)
    bank = MemoryBank(10, 4, momentum=0.5)
    before = bank.memory.clone().double()
    idx = torch.tensor([7, 2, 7, 9])  # 7 twice: the first occurrence counts
    feats = torch.randn(4, 4) * 3
    bank.update(idx, feats)
    want = before.clone()
    for row, i in ((0, 7), (1, 2), (3, 9)):
        f = feats[row].double() / feats[row].double().norm()
        m = 0.5 * before[i] + 0.5 * f
        want[i] = m / m.norm()
    torch.testing.assert_close(bank.memory.double(), want, rtol=1e-6, atol=1e-6)


def test_step_updates_the_bank_with_the_step_embeddings():
    cfg, model = build("ir", "BANK.MOMENTUM", "0.3")
    batch = {"view1": images(4, seed=1), "index": torch.tensor([3, 11, 0, 19])}
    f = embeddings(model, cfg, batch)
    before = model.bank.memory.clone().double()
    out = model(batch)
    assert torch.equal(model.bank.memory.double(), before)  # read in forward, written after the step
    out["loss"].backward()
    model.on_step_end(0)
    want = before.clone()
    for b, i in enumerate(batch["index"].tolist()):
        m = 0.3 * before[i] + 0.7 * f[b]
        want[i] = m / m.norm()
    torch.testing.assert_close(model.bank.memory.double(), want, rtol=1e-4, atol=1e-5)
    assert not model.bank.memory.requires_grad
    assert all(p.grad is not None for p in model.encoder.parameters())


# --------------------------------------------------------------------------------------------- losses
def test_ir_infonce_loss_and_bound():
    cfg, model = build("ir", "BANK.T", "0.2")
    sampler = record(model.sampler)
    batch = {"view1": images(4, seed=2), "index": torch.tensor([5, 6, 7, 8])}
    f = embeddings(model, cfg, batch)
    memory = model.bank.memory.double().clone()
    out = model(batch)
    neg, valid = sampler.calls[0]
    assert neg.shape == (4, 6) and bool(valid.all())
    for b, i in enumerate(batch["index"].tolist()):
        assert i not in neg[b].tolist()
    want = direct_infonce(f, memory, batch["index"].tolist(), neg.tolist(), 0.2)
    assert out["loss"].item() == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert out["mi_loss"].item() == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert out["num_negatives"].item() == 6
    assert model.mi_ceiling() == pytest.approx(math.log(7))
    assert model.mi_bound(out["mi_loss"]) == pytest.approx(math.log(7) - want, rel=1e-4, abs=1e-5)


def direct_nce(f, memory, indices, negatives, t, z, n):
    """InstDis's NCE: P(j) = e^{s_j/t} / Z, h = P / (P + K/N); -(log h(P_i) + sum_j log(1 - h(P_j))), averaged."""
    total = 0.0
    for b, i in enumerate(indices):
        k = len(negatives[b])
        p = math.exp(float(f[b] @ memory[i]) / t) / z
        total -= math.log(p / (p + k / n))
        for j in negatives[b]:
            pj = math.exp(float(f[b] @ memory[j]) / t) / z
            total -= math.log((k / n) / (pj + k / n))
    return total / len(indices)


def test_ir_nce_loss_with_estimated_and_given_z():
    cfg, model = build("ir", "BANK.LOSS", "nce", "BANK.T", "0.1")
    sampler = record(model.sampler)
    batches = [{"view1": images(4, seed=s), "index": torch.tensor(ix)} for s, ix in ((3, [0, 1, 2, 3]),
                                                                                     (4, [4, 5, 6, 7]))]
    z = None
    for step, batch in enumerate(batches):
        f = embeddings(model, cfg, batch)
        memory = model.bank.memory.double().clone()
        out = model(batch)
        neg, _ = sampler.calls[-1]
        idx = batch["index"].tolist()
        if z is None:  # first batch: Z = N x mean of e^{s/t} over the positives and negatives of the batch
            values = [math.exp(float(f[b] @ memory[j]) / 0.1) for b, i in enumerate(idx) for j in [i] + neg[b].tolist()]
            z = N * sum(values) / len(values)
        assert float(model.nce_z) == pytest.approx(z, rel=1e-4, abs=1e-5)  # estimated once, then kept
        want_nce = direct_nce(f, memory, idx, neg.tolist(), 0.1, z, N)
        assert out["loss"].item() == pytest.approx(want_nce, rel=1e-4, abs=1e-5)
        want_infonce = direct_infonce(f, memory, idx, neg.tolist(), 0.1)
        assert out["mi_loss"].item() == pytest.approx(want_infonce, rel=1e-4, abs=1e-5)
        out["loss"].backward()
        model.on_step_end(step)
    assert "nce_z" in model.state_dict()
    cfg, model = build("ir", "BANK.LOSS", "nce", "BANK.NCE_Z", "123.5")
    sampler = record(model.sampler)
    f = embeddings(model, cfg, batches[0])
    memory = model.bank.memory.double().clone()
    out = model(batches[0])
    want = direct_nce(f, memory, [0, 1, 2, 3], sampler.calls[0][0].tolist(), 0.07, 123.5, N)
    assert float(model.nce_z) == 123.5 and out["loss"].item() == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_ball_loss_uses_the_nearest_entries():
    cfg, model = build("ball")
    sampler = record(model.sampler)
    batch = {"view1": images(4, seed=5), "index": torch.tensor([1, 9, 14, 18])}
    f = embeddings(model, cfg, batch)
    memory = model.bank.memory.double().clone()
    out = model(batch)
    neg, valid = sampler.calls[0]
    idx = batch["index"].tolist()
    for b, i in enumerate(idx):
        assert neg[b].tolist() == brute_ball(f[b], memory, i, 5)
    want = direct_infonce(f, memory, idx, neg.tolist(), 0.07)
    assert out["loss"].item() == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert out["background_size"].item() == 5 and model.mi_ceiling() == pytest.approx(math.log(6))


def test_ann_loss_masks_the_close_neighbours():
    cfg, model = build("ann", "BALL.NEIGHBOURS", "8", "BANK.NUM_NEGATIVES", "8")
    with torch.no_grad():  # a bank with structure: 4 groups of 5 near-identical entries
        g = torch.Generator().manual_seed(3)
        centres = F.normalize(torch.randn(4, 8, generator=g), dim=1)
        model.bank.memory.copy_(F.normalize(centres.repeat_interleave(5, 0) + 0.3 * torch.randn(N, 8, generator=g),
                                            dim=1))
    model.on_epoch_start(0)
    assign = model.sampler.clusters.assignments.clone()
    sampler = record(model.sampler)
    batch = {"view1": images(4, seed=6), "index": torch.tensor([0, 6, 12, 19])}
    f = embeddings(model, cfg, batch)
    memory = model.bank.memory.double().clone()
    out = model(batch)
    neg, valid = sampler.calls[0]
    idx = batch["index"].tolist()
    kept = []
    for b, i in enumerate(idx):
        ball = brute_ball(f[b], memory, i, 8)
        assert neg[b].tolist() == ball
        kept.append([j for j in ball if j not in close_set(assign, i)])
        assert [j for j, v in zip(neg[b].tolist(), valid[b].tolist()) if v] == kept[-1]
    assert sum(len(ball) - len(k) for ball, k in zip(neg.tolist(), kept)) > 0  # some cluster-mates were removed
    want = direct_infonce(f, memory, idx, kept, 0.07)
    assert out["loss"].item() == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert out["num_negatives"].item() == pytest.approx(sum(map(len, kept)) / 4)
    assert model.num_negatives == round(sum(map(len, kept)) / 4)
    assert out["close_runs"].item() == 2


def test_ann_cluster_state_survives_a_checkpoint():
    _, model = build("ann")
    model.on_epoch_start(3)
    state = model.extra_state()
    assert state["sampler"]["clusters"]["epoch"] == 3
    cfg, other = build("ann")
    other.load_state_dict(model.state_dict())
    assert torch.equal(other.bank.memory, model.bank.memory)
    other.load_extra_state(state)
    with torch.no_grad():  # the bank moved between the epoch start and the checkpoint
        other.bank.memory.copy_(F.normalize(torch.randn(N, 8, generator=torch.Generator().manual_seed(1)), dim=1))
    other.on_epoch_start(3)  # the resumed epoch keeps the saved clusters
    assert torch.equal(other.sampler.clusters.assignments, model.sampler.clusters.assignments)
    fresh = ClusterSets(cfg, N)  # which a recomputation on the moved bank would not give
    fresh.recompute(other.bank.memory, 3)
    assert not torch.equal(fresh.assignments, model.sampler.clusters.assignments)


def direct_la(f, memory, idx, negatives, close, t):
    """-log sum_{{i} u (C_i n B_i)} e^{s} / sum_{{i} u B_i} e^{s}, averaged."""
    total = 0.0
    for b, i in enumerate(idx):
        s = {j: float(f[b] @ memory[j]) / t for j in [i] + negatives[b]}
        top = logsumexp([s[i]] + [s[j] for j in negatives[b] if j in close[b]])
        total += logsumexp(list(s.values())) - top
    return total / len(idx)


def test_la_starts_with_ir_then_aggregates():
    cfg, model = build("la", "LA.IR_EPOCHS", "1", "BALL.NEIGHBOURS", "8", "BANK.NUM_NEGATIVES", "8")
    ir_sampler, ball_sampler = record(model.ir_sampler), record(model.sampler)
    batch = {"view1": images(4, seed=7), "index": torch.tensor([2, 3, 10, 17])}
    idx = batch["index"].tolist()
    model.on_epoch_start(0)
    assert model.clusters.assignments is None  # no k-means during the IR epochs
    f = embeddings(model, cfg, batch)
    memory = model.bank.memory.double().clone()
    out = model(batch)
    neg, _ = ir_sampler.calls[0]
    assert out["la_phase"].item() == 0 and not ball_sampler.calls
    assert out["loss"].item() == pytest.approx(direct_infonce(f, memory, idx, neg.tolist(), 0.07), rel=1e-4, abs=1e-5)
    out["loss"].backward()
    model.on_step_end(0)

    model.on_epoch_start(1)  # LA from here: clusters of the bank
    assign = model.clusters.assignments.clone()
    assert assign.shape == (2, N)
    f = embeddings(model, cfg, batch)
    memory = model.bank.memory.double().clone()
    out = model(batch)
    neg, valid = ball_sampler.calls[0]
    assert bool(valid.all()) and out["la_phase"].item() == 1
    close = [close_set(assign, i) for i in idx]
    for b, i in enumerate(idx):
        assert neg[b].tolist() == brute_ball(f[b], memory, i, 8)
    want = direct_la(f, memory, idx, neg.tolist(), close, 0.07)
    assert out["loss"].item() == pytest.approx(want, rel=1e-4, abs=1e-5)
    # the logged bound is LA_0 = BALL on the same similarities (Wu et al. Lemma 5.2), above the LA loss
    ball = direct_infonce(f, memory, idx, neg.tolist(), 0.07)
    assert out["mi_loss"].item() == pytest.approx(ball, rel=1e-4, abs=1e-5) and ball >= want
    assert out["close_size"].item() == pytest.approx(sum(len(set(n) & c) for n, c in zip(neg.tolist(), close)) / 4)
    assert model.mi_ceiling() == pytest.approx(math.log(9))


def test_la_with_singleton_clusters_is_ball():
    """Lemma 5.2: with C_i = {i} (k-means k = N: every entry alone) LA's loss is BALL's."""
    _, la = build("la", "LA.IR_EPOCHS", "0", "CLUSTER.K", str(N))
    _, ball = build("ball")
    ball.load_state_dict(la.state_dict())
    la.on_epoch_start(0)
    batch = {"view1": images(4, seed=8), "index": torch.tensor([0, 4, 8, 12])}
    a, b = la(batch), ball(batch)
    assert a["loss"].item() == pytest.approx(b["loss"].item(), rel=1e-6)
    assert a["close_size"].item() == 0


def test_ball_plus_and_ann_plus_start_as_ir():
    for name in ("ball_plus", "ann_plus"):
        cfg, model = build(name, "BALL.ANNEAL_EPOCHS", "(0.0, 0.0)", ipe=5, max_iter=10)
        model.on_epoch_start(0)
        sampler = record(model.sampler)
        batch = {"view1": images(4, seed=9), "index": torch.tensor([0, 1, 2, 3])}
        f = embeddings(model, cfg, batch)
        memory = model.bank.memory.double().clone()
        out = model(batch)
        neg, valid = sampler.calls[0]
        assert out["background_size"].item() == N - 1 and neg.shape == (4, 6) and bool(valid.all())
        want = direct_infonce(f, memory, [0, 1, 2, 3], neg.tolist(), 0.07)
        assert out["loss"].item() == pytest.approx(want, rel=1e-4, abs=1e-5)
        if name == "ann_plus":
            assert out["close_runs"].item() == 0
        out["loss"].backward()
        model.on_step_end(0)
        assert model.sampler.background_size(model._iter) < N - 1  # shrinking from the next iteration on
        assert model.sampler.background_size(10) == 5


# --------------------------------------------------------------------------------------------- 2 processes
WORLD = 2


def _bank_worker(rank, port, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    du.init_process_group(du.DistInfo(rank, WORLD, rank, WORLD, "127.0.0.1", port), backend="gloo")
    try:
        cfg, model = build("ann")
        start = model.bank.memory.clone()
        # k-means runs on rank 0 only: even from a different bank, rank 1 gets rank 0's clusters
        memory = model.bank.memory if rank == 0 else F.normalize(torch.randn(N, 8), dim=1)
        model.sampler.on_epoch_start(0, memory)
        # rank 0 sees images 0-3, rank 1 images 4-6 and 3 again (the first occurrence, rank 0's, wins)
        idx = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 3]][rank])
        batch = {"view1": images(4, seed=20 + rank), "index": idx}
        f = embeddings(model, cfg, batch).float()
        out = model(batch)
        out["loss"].backward()
        model.on_step_end(0)
        torch.save({"start": start, "bank": model.bank.memory.clone(), "f": f, "idx": idx,
                    "clusters": model.sampler.clusters.assignments.clone()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_processes_share_one_bank_and_one_clustering(tmp_path):
    mp.start_processes(_bank_worker, args=(du.free_port(), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="spawn")
    r = [torch.load(tmp_path / f"rank{k}.pt") for k in range(WORLD)]
    assert torch.equal(r[0]["start"], r[1]["start"])
    assert torch.equal(r[0]["bank"], r[1]["bank"])
    assert torch.equal(r[0]["clusters"], r[1]["clusters"])
    # single-process reference: every gathered (index, feature) applied once, rank order, first occurrence
    want = r[0]["start"].double().clone()
    done = set()
    for k in range(WORLD):
        for i, f in zip(r[k]["idx"].tolist(), r[k]["f"].double()):
            if i in done:
                continue
            done.add(i)
            m = 0.5 * want[i] + 0.5 * f / f.norm()
            want[i] = m / m.norm()
    torch.testing.assert_close(r[0]["bank"].double(), want, rtol=1e-5, atol=1e-5)
    untouched = [i for i in range(N) if i not in done]
    assert torch.equal(r[0]["bank"][untouched], r[0]["start"][untouched])


def _ceiling_worker(rank, port, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    du.init_process_group(du.DistInfo(rank, WORLD, rank, WORLD, "127.0.0.1", port), backend="gloo")
    try:
        # B_i = the whole bank (19 <= K), C_i from one run: 0-9 / 10-14 / 15-16 / 17-19
        cfg, model = build("ann", "BALL.NEIGHBOURS", "19", "BANK.NUM_NEGATIVES", "19", "CLUSTER.RUNS", "1")
        ids = [0] * 10 + [1] * 5 + [2] * 2 + [3] * 3
        model.sampler.load_extra_state({"clusters": {"assignments": torch.tensor([ids]), "epoch": 0}})
        model.on_epoch_start(0)
        # rank 0's images have 9 close neighbours (10 valid negatives), rank 1's one (18 valid)
        batch = {"view1": images(2, seed=30 + rank), "index": torch.tensor([[0, 1], [15, 16]][rank])}
        out = model(batch)
        torch.save({"num_negatives": float(out["num_negatives"]), "k": model.num_negatives,
                    "ceiling": model.mi_ceiling()}, os.path.join(out_dir, f"ceiling{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_processes_report_one_mi_ceiling(tmp_path):
    """The MI ceiling log(K + 1) of a variable-size negative set uses the mean K over every process's rows
    (what the logged num_negatives averages to), not each process's own: the loop logs rank 0's ceiling."""
    mp.start_processes(_ceiling_worker, args=(du.free_port(), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="spawn")
    r = [torch.load(tmp_path / f"ceiling{k}.pt") for k in range(WORLD)]
    assert [x["num_negatives"] for x in r] == [10.0, 18.0]  # this process's rows (averaged by the loop)
    assert [x["k"] for x in r] == [14, 14]
    assert [x["ceiling"] for x in r] == [pytest.approx(math.log(15))] * 2


# --------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """8 train images (4 classes) and 4 val images, 32 px PNG."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("bank_data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for i in range(n):
            folder = root / split / f"c{i % 4}"
            folder.mkdir(parents=True, exist_ok=True)
            base = np.array([60 * (i % 4), 255 - 60 * (i % 4), 128], dtype=np.int16)
            pixels = np.clip(base + rng.integers(-40, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return str(root)


def tiny_run(method, root, out_dir, *extra):
    from pretrain.training import train
    argv = ["--config-file", os.path.join(CONFIGS, f"{method}_R_18_cifar.yaml"), "DATA.ROOT", root,
            "OUTPUT_DIR", str(out_dir), "SOLVER.BATCH_SIZE", "4", "SOLVER.EPOCHS", "2", "LOG_PERIOD", "1",
            "DATA.NUM_WORKERS", "0", "MODEL.PRECISION", "fp32", "MODEL.DIM", "16", "SEED", "5",
            "KNN.BATCH_SIZE", "8", "CLUSTER.K", "3", "CLUSTER.RUNS", "2", "BALL.NEIGHBOURS", "4",
            "BANK.NUM_NEGATIVES", "5", "MODEL.CHANNELS_LAST", "False", "LA.IR_EPOCHS", "1",
            "BALL.ANNEAL_EPOCHS", "(0.0, 0.0)", "TENSORBOARD", "False", *extra]
    assert train.main(argv) == 0


def metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("method", BANK_METHODS)
def test_tiny_run_checkpoint_and_conversion(method, tiny_root, tmp_path):
    from transfer.conversion.convert import convert

    out = tmp_path / "run"
    extra = ["BANK.NUM_NEGATIVES", "4096"] if method == "ir" else []  # clamped to the 7 other images
    tiny_run(method, tiny_root, out, *extra)
    ckpt = torch.load(out / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    assert ckpt["method"] == method and ckpt["iter"] == 4 and ckpt["epoch"] == 2
    sd = ckpt["state_dict"]
    assert sd["bank.memory"].shape == (8, 16)
    torch.testing.assert_close(sd["bank.memory"].norm(dim=1), torch.ones(8))
    if method in ("ann", "ann_plus"):
        state = ckpt["method_state"]["sampler"]["clusters"]
        assert state["epoch"] == 1 and state["assignments"].shape == (2, 8)
    if method == "la":
        assert ckpt["method_state"]["clusters"]["epoch"] == 1
    records = [m for m in metrics(out) if "loss" in m]
    assert [m["iter"] for m in records] == [1, 2, 3, 4]
    for m in records:
        # one process, a line per step: the ceiling is log(K + 1) of that step's (mean) number of negatives
        k = max(1, round(m["num_negatives"]))
        assert math.isfinite(m["loss"]) and m["mi_ceiling"] == pytest.approx(math.log(k + 1))
        assert m["mi_bound"] <= m["mi_ceiling"]
    if method == "ir":
        assert all(m["num_negatives"] == 7 for m in records)
        assert "BANK.NUM_NEGATIVES 4096 is larger" in open(out / "log.txt").read()
    if method == "la":
        assert [m["la_phase"] for m in records] == [0, 0, 1, 1]
        log = open(out / "log.txt").read()
        assert "IR phase" in log and "local aggregation phase" in log
    if method.endswith("_plus"):  # B_i shrinks from the whole bank (7) to the 4 nearest over the run
        sizes = [m["background_size"] for m in records]
        assert sizes[0] == 7 and sizes == sorted(sizes, reverse=True) and sizes[-1] < 7
    assert any("knn_top1" in m for m in metrics(out))
    # the layout is the same for every method: the feature comparison once (IR), the weights for all
    result = convert(str(out / "checkpoint_final.pth"), str(tmp_path / "r18.pkl"), verify=method == "ir")
    assert result.backbone.layout == "pretrain" and result.backbone.arch.depth == 18
    if method == "ir":
        assert result.verification.max_rel_error < 1e-4
    assert result.backbone.dropped.get("head", 0) >= 2  # the projection head (fc) is not backbone
    assert torch.equal(result.backbone.state["conv1.weight"], sd["encoder.conv1.weight"].float())
    if method == "ann_plus":  # the command-line tool too
        proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "convert_backbone.py"),
                               str(out / "checkpoint_final.pth"), str(tmp_path / "cli.pkl")], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert os.path.isfile(tmp_path / "cli.pkl")


def test_resume_restores_bank_and_clusters(tiny_root, tmp_path):
    """LA with one IR epoch: the resumed run continues mid-epoch 1 with the bank and the clusters of the
    checkpoint (recomputing them on the bank of iteration 3 would change the clustering of epoch 1)."""
    method = "la"
    full, split = tmp_path / "full", tmp_path / "split"
    common = ["SOLVER.EPOCHS", "3", "KNN.PERIOD", "0", "SOLVER.LR_SCHEDULER", "cosine"]
    tiny_run(method, tiny_root, full, *common)
    tiny_run(method, tiny_root, split, *common, "SOLVER.STOP_ITER", "3")  # mid-epoch 1: clusters of epoch 1
    stopped = torch.load(split / "checkpoint_last.pth", map_location="cpu", weights_only=True)
    state = stopped["method_state"]
    assert stopped["iter"] == 3 and state["clusters"]["epoch"] == 1
    tiny_run(method, tiny_root, split, *common, "--resume")
    a, b = metrics(full), metrics(split)
    keys = ("loss", "mi_bound", "num_negatives", "acc", "lr", "background_size", "close_runs", "la_phase")
    assert [[m.get(k) for k in keys] for m in a] == [[m.get(k) for k in keys] for m in b]  # bit for bit
    assert [m["iter"] for m in a] == list(range(1, 7))
    ca = torch.load(full / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    cb = torch.load(split / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    for k in ca["state_dict"]:
        assert torch.equal(ca["state_dict"][k], cb["state_dict"][k]), k
    sa, sb = ca["method_state"], cb["method_state"]
    assert sa["clusters"]["epoch"] == sb["clusters"]["epoch"] == 2
    assert torch.equal(sa["clusters"]["assignments"], sb["clusters"]["assignments"])
