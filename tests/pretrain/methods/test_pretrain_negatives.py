"""pretrain.methods.negatives: the negative sets of IR, BALL, ANN and their annealed versions, each against a
brute-force computation on a tiny bank (sorting every similarity, comparing cluster ids one by one)."""
import logging
import math

import pytest
import torch
import torch.nn.functional as F

from pretrain.config import load_config
from pretrain.methods.negatives import (AnnSampler, BallSampler, ClusterSets, NegativeSampler, annealed_size,
                                build_negative_sampler, clamp_with_warning)
from pretrain.methods.neighbours import have_faiss, search


def cfg_with(*opts):
    return load_config(None, ["SEED", "3", "BANK.BACKEND", "torch", *opts])


def unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1)


def brute_ball(query, memory, i, size):
    """The ``size`` bank rows nearest to ``query`` by inner product, ``i`` left out (a Python sort)."""
    sims = [(float(query @ memory[j]), j) for j in range(memory.shape[0]) if j != i]
    sims.sort(key=lambda t: -t[0])
    return [j for _, j in sims[:size]]


def brute_close(assignments, i):
    """Rows sharing a cluster with ``i`` in any run (loops)."""
    runs, n = assignments.shape
    return {j for j in range(n) for r in range(runs) if int(assignments[r, j]) == int(assignments[r, i])}


def context(ipe, max_iter):
    return {"iters_per_epoch": ipe, "max_iter": max_iter, "start_iter": 0, "world_size": 1, "num_train_images": 0}


def test_clamp_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="pretrain.methods.negatives"):
        assert clamp_with_warning(10, 20, "X") == 10
        assert not caplog.records
        assert clamp_with_warning(4096, 15, "BANK.NUM_NEGATIVES") == 15
    assert "BANK.NUM_NEGATIVES 4096" in caplog.text and "15" in caplog.text


def test_uniform_excludes_self_and_covers_the_bank(caplog):
    n = 12
    with caplog.at_level(logging.WARNING, logger="pretrain.methods.negatives"):
        sampler = build_negative_sampler("uniform", cfg_with(), n)  # 4096 negatives of 11 other entries
    assert type(sampler) is NegativeSampler and sampler.K == n - 1 and sampler.num_negatives() == n - 1
    assert "BANK.NUM_NEGATIVES 4096" in caplog.text
    memory = unit(n, 4, 0)
    indices = torch.tensor([0, 5, 11, 5])
    torch.manual_seed(0)
    counts = torch.zeros(4, n)
    for _ in range(300):
        neg, valid = sampler.sample(memory[indices], indices, memory, 0)
        assert neg.shape == (4, n - 1) and bool(valid.all())
        for b in range(4):
            counts[b] += torch.bincount(neg[b], minlength=n)
    for b, i in enumerate(indices.tolist()):
        assert counts[b, i] == 0  # never itself
        others = torch.cat([counts[b, :i], counts[b, i + 1:]])
        assert others.sum() == 300 * (n - 1)
        # uniform: 300 draws per entry expected; binomial sd ~ 16.5
        assert others.min() > 220 and others.max() < 380


@pytest.mark.parametrize("size", [1, 5, 11])
def test_ball_is_the_nearest_entries_without_self(size):
    n = 12
    memory = unit(n, 6, 1)
    sampler = BallSampler(cfg_with("BALL.NEIGHBOURS", str(size), "BANK.NUM_NEGATIVES", "11"), n)
    # queries: near their own entry (i would be the nearest), opposite to it (i is last), and a random one
    indices = torch.tensor([3, 7, 0])
    query = F.normalize(torch.stack([memory[3] + 0.05 * unit(1, 6, 9)[0], -memory[7], unit(1, 6, 5)[0]]), dim=1)
    neg, valid = sampler.sample(query, indices, memory, 0)
    assert neg.shape == (3, size) and bool(valid.all())
    for b, i in enumerate(indices.tolist()):
        assert neg[b].tolist() == brute_ball(query[b], memory, i, size)
        assert i not in neg[b].tolist()
    assert sampler.num_negatives() == size and sampler.last_background_size == size


def test_ball_fraction_and_clamps(caplog):
    n = 20
    s = BallSampler(cfg_with("BALL.FRACTION", "0.25"), n)
    assert s.end_size == 5
    with caplog.at_level(logging.WARNING, logger="pretrain.methods.negatives"):
        s = BallSampler(cfg_with("BALL.NEIGHBOURS", "4096"), n)
    assert s.end_size == n - 1 and "BALL.NEIGHBOURS 4096" in caplog.text


def test_ball_larger_than_k_draws_uniformly_inside_the_ball():
    n, size, k = 16, 9, 4
    memory = unit(n, 5, 2)
    sampler = BallSampler(cfg_with("BALL.NEIGHBOURS", str(size), "BANK.NUM_NEGATIVES", str(k)), n)
    indices = torch.tensor([2, 13])
    query = F.normalize(memory[indices] + 0.3 * unit(2, 5, 4), dim=1)
    balls = [set(brute_ball(query[b], memory, int(i), size)) for b, i in enumerate(indices)]
    torch.manual_seed(0)
    seen = [set(), set()]
    counts = torch.zeros(2, n)
    for _ in range(200):
        neg, valid = sampler.sample(query, indices, memory, 0)
        assert neg.shape == (2, k) and bool(valid.all())
        for b in range(2):
            assert set(neg[b].tolist()) <= balls[b]
            seen[b] |= set(neg[b].tolist())
            counts[b] += torch.bincount(neg[b], minlength=n)
    assert seen == balls
    for b in range(2):  # 800 draws over 9 entries: ~89 each
        inside = counts[b, sorted(balls[b])]
        assert inside.min() > 55 and inside.max() < 125
    assert sampler.num_negatives() == k


@pytest.mark.skipif(not have_faiss(), reason="FAISS is not installed")
def test_faiss_and_torch_backends_agree():
    n = 40
    memory = unit(n, 8, 3)
    query = unit(6, 8, 4)
    s_t, i_t = search(query, memory, 7, backend="torch")
    s_f, i_f = search(query, memory, 7, backend="faiss")
    assert torch.equal(i_t, i_f)
    torch.testing.assert_close(s_t, s_f, rtol=1e-5, atol=1e-5)
    indices = torch.tensor([0, 1, 2, 3, 4, 5])
    sets = {}
    for backend in ("torch", "faiss"):
        sampler = BallSampler(cfg_with("BANK.BACKEND", backend, "BALL.NEIGHBOURS", "6"), n)
        sets[backend], _ = sampler.sample(query, indices, memory, 0)
    assert torch.equal(sets["torch"], sets["faiss"])


def test_ann_removes_the_cluster_mates():
    n, runs = 24, 3
    memory = unit(n, 6, 6)
    cfg = cfg_with("BALL.NEIGHBOURS", "10", "BANK.NUM_NEGATIVES", "16", "CLUSTER.K", "4", "CLUSTER.RUNS", str(runs))
    sampler = build_negative_sampler("ann", cfg, n)
    assert isinstance(sampler, AnnSampler)
    with pytest.raises(RuntimeError, match="on_epoch_start"):
        sampler.sample(memory[:2], torch.tensor([0, 1]), memory, 0)
    sampler.on_epoch_start(0, memory)
    assign = sampler.clusters.assignments
    assert assign.shape == (runs, n) and int(assign.max()) < 4
    # every run is a k-means fixed point of the bank: each entry is in the cluster of its nearest centroid
    for r in range(runs):
        centroids = torch.stack([memory[assign[r] == c].mean(0) for c in range(4)])
        assert torch.equal(torch.cdist(memory, centroids).argmin(1), assign[r])
    indices = torch.tensor([1, 8, 20, 8])
    query = F.normalize(memory[indices] + 0.2 * unit(4, 6, 7), dim=1)
    neg, valid = sampler.sample(query, indices, memory, 0)
    assert neg.shape == (4, 10)
    counts = []
    for b, i in enumerate(indices.tolist()):
        ball = brute_ball(query[b], memory, i, 10)
        close = brute_close(assign, i)
        assert neg[b].tolist() == ball
        assert [j for j, v in zip(neg[b].tolist(), valid[b].tolist()) if v] == [j for j in ball if j not in close]
        counts.append(len([j for j in ball if j not in close]))
    assert sampler.num_negatives() == round(sum(counts) / 4)
    # a second call for the same epoch keeps the clusters; the next epoch recomputes with other seeds
    before = assign.clone()
    sampler.on_epoch_start(0, torch.flip(memory, [0]))
    assert torch.equal(sampler.clusters.assignments, before)
    sampler.on_epoch_start(1, memory)
    assert sampler.clusters.epoch == 1


def test_cluster_state_round_trip():
    n = 15
    memory = unit(n, 4, 8)
    cfg = cfg_with("CLUSTER.K", "3", "CLUSTER.RUNS", "2")
    a = ClusterSets(cfg, n)
    a.recompute(memory, 4)
    state = a.extra_state()
    assert set(state) == {"assignments", "epoch"} and state["epoch"] == 4
    b = ClusterSets(cfg, n)
    b.load_extra_state(state)
    assert not b.recompute(unit(n, 4, 9), 4)  # restored for this epoch: no k-means on another bank
    assert torch.equal(b.assignments, a.assignments)
    assert b.recompute(memory, 5)
    with pytest.raises(ValueError, match="CLUSTER.RUNS"):
        ClusterSets(cfg_with("CLUSTER.RUNS", "5"), n).load_extra_state(state)


def test_kmeans_k_clamped_to_the_bank(caplog):
    with caplog.at_level(logging.WARNING, logger="pretrain.methods.negatives"):
        sets = ClusterSets(cfg_with("CLUSTER.K", "30000"), 9)
    assert sets.k == 9 and "CLUSTER.K 30000" in caplog.text
    memory = unit(9, 4, 1)
    sets.recompute(memory, 0)  # k = N: every entry alone, C_i = {i}
    for i in range(9):
        assert brute_close(sets.assignments, i) == {i}


@pytest.mark.parametrize("schedule", ["linear", "cosine", "exp"])
def test_annealed_background_shrinks_on_schedule(schedule):
    n, end, ipe, max_iter = 101, 5, 10, 100
    cfg = cfg_with("BALL.ANNEAL", "True", "BALL.ANNEAL_SCHEDULE", schedule, "BALL.NEIGHBOURS", str(end),
                   "BALL.ANNEAL_EPOCHS", "(2.0, 8.0)", "BANK.NUM_NEGATIVES", "8")
    sampler = BallSampler(cfg, n)
    sampler.on_train_start(context(ipe, max_iter))
    start = n - 1
    sizes = []
    for it in range(0, max_iter + 1, 5):
        p = min(1.0, max(0.0, (it / ipe - 2.0) / 6.0))
        if schedule == "linear":
            want = start + (end - start) * p
        elif schedule == "cosine":
            want = end + (start - end) * (1 + math.cos(math.pi * p)) / 2
        else:
            want = start * (end / start) ** p
        got = sampler.background_size(it)
        assert abs(got - want) <= 0.5 + 1e-9, (it, got, want)
        sizes.append(got)
    assert sizes[0] == start and sizes[-1] == end
    assert all(a >= b for a, b in zip(sizes, sizes[1:]))  # never grows
    assert annealed_size(start, end, 0.0, schedule) == start and annealed_size(start, end, 1.0, schedule) == end
    # plain BALL ignores the schedule; "end 0" means the end of training
    assert BallSampler(cfg_with("BALL.NEIGHBOURS", "5"), n).background_size(0) == 5
    whole = BallSampler(cfg_with("BALL.ANNEAL", "True", "BALL.NEIGHBOURS", "5"), n)
    whole.on_train_start(context(ipe, max_iter))
    assert whole.background_size(50) == round(start + (end - start) * 0.5)


def test_annealed_sets_start_as_ir_and_end_as_ball():
    n, k = 30, 6
    memory = unit(n, 5, 11)
    cfg = cfg_with("BALL.ANNEAL", "True", "BALL.NEIGHBOURS", "4", "BANK.NUM_NEGATIVES", str(k))
    sampler = BallSampler(cfg, n)
    sampler.on_train_start(context(10, 100))
    indices = torch.tensor([4, 17])
    query = F.normalize(memory[indices] + 0.1 * unit(2, 5, 12), dim=1)
    torch.manual_seed(1)
    # start: B_i is the whole bank (IR): draws reach far entries, never i
    seen = [set(), set()]
    for _ in range(100):
        neg, valid = sampler.sample(query, indices, memory, 0)
        assert neg.shape == (2, k) and bool(valid.all())
        for b in range(2):
            seen[b] |= set(neg[b].tolist())
    for b, i in enumerate(indices.tolist()):
        assert seen[b] == set(range(n)) - {i}
    # 40% of the way: |B_i| = 29 - 0.4 x 25 = 19, draws stay inside the 19 nearest and reach all of them
    assert sampler.background_size(40) == 19
    seen = [set(), set()]
    for _ in range(60):
        neg, _ = sampler.sample(query, indices, memory, 40)
        for b, i in enumerate(indices.tolist()):
            assert set(neg[b].tolist()) <= set(brute_ball(query[b], memory, i, 19))
            seen[b] |= set(neg[b].tolist())
    for b, i in enumerate(indices.tolist()):
        assert seen[b] == set(brute_ball(query[b], memory, i, 19))
    # end: exactly the 4 nearest
    neg, valid = sampler.sample(query, indices, memory, 100)
    for b, i in enumerate(indices.tolist()):
        assert neg[b].tolist() == brute_ball(query[b], memory, i, 4)


def test_ann_plus_close_set_grows_from_empty():
    n, runs = 30, 4
    memory = unit(n, 5, 13)
    cfg = cfg_with("BALL.NEIGHBOURS", "8", "BANK.NUM_NEGATIVES", "8", "CLUSTER.K", "3", "CLUSTER.RUNS", str(runs))
    sampler = build_negative_sampler("ann", cfg, n, anneal=True, anneal_close=True)
    sampler.on_train_start(context(10, 100))
    sampler.on_epoch_start(0, memory)
    used = [sampler.close_runs(it) for it in range(0, 101, 10)]
    assert used[0] == 0 and used[-1] == runs and used == sorted(used)
    for it in range(0, 101, 10):  # round(w x RUNS), w = it / 100 (linear)
        assert sampler.close_runs(it) == math.floor(it / 100 * runs + 0.5)
    indices = torch.tensor([3, 22])
    query = F.normalize(memory[indices] + 0.1 * unit(2, 5, 14), dim=1)
    assign = sampler.clusters.assignments
    torch.manual_seed(2)
    # at the start the close set is empty: cluster-mates are drawn too (pure IR)
    seen = [set(), set()]
    for _ in range(100):
        neg, valid = sampler.sample(query, indices, memory, 0)
        assert bool(valid.all())
        for b in range(2):
            seen[b] |= set(neg[b].tolist())
    for b, i in enumerate(indices.tolist()):
        assert seen[b] == set(range(n)) - {i}
    # mid-way (|B| > K, 2 of 4 runs): draws lie in B_i minus the close set of the first two runs
    it = 50
    size = sampler.background_size(it)
    assert size > 8 and sampler.close_runs(it) == 2
    for _ in range(30):
        neg, valid = sampler.sample(query, indices, memory, it)
        for b, i in enumerate(indices.tolist()):
            allowed = set(brute_ball(query[b], memory, i, size)) - brute_close(assign[:2], i)
            assert set(neg[b][valid[b]].tolist()) <= allowed
    # end: B_i of 8 minus the cluster-mates of all runs
    neg, valid = sampler.sample(query, indices, memory, 100)
    for b, i in enumerate(indices.tolist()):
        ball = brute_ball(query[b], memory, i, 8)
        assert neg[b].tolist() == ball
        assert set(neg[b][valid[b]].tolist()) == set(ball) - brute_close(assign, i)


def test_unknown_kind_and_schedule():
    with pytest.raises(ValueError, match="negative sampler"):
        build_negative_sampler("hard", cfg_with(), 10)
    with pytest.raises(ValueError, match="BALL.ANNEAL_SCHEDULE"):
        BallSampler(cfg_with("BALL.ANNEAL_SCHEDULE", "step"), 10)
    with pytest.raises(ValueError, match="no negatives"):
        NegativeSampler(cfg_with(), 1)
