"""Post-training mutual-information estimation on frozen features (Lee et al., "A rigorous MI analysis", Sec. III).

The MI read off a contrastive training loss is capped by its batch (``log(2K - 1)`` for NT-Xent,
``log(K + 1)`` for a MoCo queue of K, :func:`pretrain.methods.base.mi_ceiling`) and belongs to an encoder
that was still moving. Here the encoder is **frozen**: its features are computed once, a fresh critic
(:mod:`pretrain.evaluation.mi.critic`) is trained to maximise the InfoNCE bound
(:mod:`pretrain.evaluation.mi.bound`) with a large estimation batch ``K_Est``, and the bound is then read on
held-out pairs (:mod:`pretrain.evaluation.mi.pairs`).

Protocol (per seed)
-------------------
1. The items (images, or rows of paired tensors) are split three ways: test items (``holdout``, default
   25%), then validation items (``holdout`` of the rest), the rest to train on; stratified by class for class
   pairing, so every class needs 6 images. The split depends on the seed.
2. The critic is trained for ``iters`` steps of Adam (lr 1e-3, cosine decay) on batches of ``K_Est`` pairs
   drawn from the training items (i.i.d.: anchors are drawn with replacement, see
   :func:`pretrain.evaluation.mi.pairs.choose_anchors`). ``checks`` (20) times during training the bound is
   measured on validation batches; the critic kept is the best one there (early stopping). On a few thousand
   images a critic on 512-2048-d features memorises its training images within a few hundred steps and its
   held-out bound then falls (on CDP with a random ResNet-18 and 1,500 training images, from 2.6 to 0.3 bits
   for ``class:all``).
3. The estimate is the mean bound over ``eval_batches`` batches of ``K_Est`` pairs of test items (with its
   standard error). Neither the training nor the choice of the critic saw them, so the estimate is an
   unbiased reading of the bound of a fixed critic: it cannot be inflated by memorisation or selection.

The report gives the mean over seeds and their standard deviation (the seed changes the split, the
critic's initialisation and the batches).
"""
import logging
import math

import numpy as np
import torch

from pretrain.evaluation.mi.bound import FORMS, NATS_PER_BIT, NEAR_CEILING, MIError, ceiling_nats, infonce_bound
from pretrain.evaluation.mi.critic import Critic, hidden_width
from pretrain.evaluation.mi.pairs import MIN_PER_CLASS, TensorPairs

__all__ = ["seed_list", "check_arguments", "estimate_mi"]

logger = logging.getLogger("pretrain.evaluation.mi")


def seed_list(seeds):
    """``seeds`` (an int or an iterable of ints) as a non-empty list of ints; raises :class:`MIError`."""
    if isinstance(seeds, (int, np.integer)):
        return [int(seeds)]
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise MIError("no seeds given")
    return seeds


def check_arguments(k_est, iters, holdout, eval_batches, form, checks=1):
    """The estimation settings are usable (integers in range, a known form); raises :class:`MIError`."""
    if isinstance(k_est, bool) or not isinstance(k_est, (int, np.integer)) or k_est < 2:
        raise MIError(f"k_est must be an integer >= 2, got {k_est!r}")
    if isinstance(iters, bool) or not isinstance(iters, (int, np.integer)) or iters < 1:
        raise MIError(f"iters must be a positive integer, got {iters!r}")
    if not 0.0 < float(holdout) < 1.0:
        raise MIError(f"holdout must be a fraction in (0, 1), got {holdout!r}")
    if isinstance(eval_batches, bool) or not isinstance(eval_batches, (int, np.integer)) or eval_batches < 1:
        raise MIError(f"eval_batches must be a positive integer, got {eval_batches!r}")
    if isinstance(checks, bool) or not isinstance(checks, (int, np.integer)) or checks < 1:
        raise MIError(f"checks must be a positive integer, got {checks!r}")
    if form not in FORMS:
        raise MIError(f"unknown bound form {form!r}; use {' or '.join(FORMS)}")


def _estimate_one(source, seed, *, k_est, iters, form, holdout, eval_batches, lr, hidden_dim, out_dim,
                  temperature, learn_temperature, device, log_every, checks):
    generator = torch.Generator().manual_seed(int(seed))
    rest, test = source.split(holdout, generator)
    train, val = rest.split(holdout, generator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        critic = Critic(source.dims, train.stats(), hidden_dim=hidden_dim, out_dim=out_dim,
                        temperature=temperature, learn_temperature=learn_temperature).to(device)
    optimizer = torch.optim.Adam(critic.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / iters)))
    train, val, test = train.to(device), val.to(device), test.to(device)
    period = max(1, iters // checks)
    val_batches = max(1, min(eval_batches, 10))

    def mean_bound(pairs, batches):
        critic.eval()
        with torch.no_grad():
            values = [float(infonce_bound(*critic(*pairs.sample(k_est, generator)), critic.temperature, form))
                      for _ in range(batches)]
        critic.train()
        return values

    history = []  # (iteration, mean training bound since the last check, validation bound)
    best = (-math.inf, 0, None)
    window = []
    critic.train()
    for it in range(1, iters + 1):
        a, b = train.sample(k_est, generator)
        za, zb = critic(a, b)
        bound = infonce_bound(za, zb, critic.temperature, form)
        optimizer.zero_grad(set_to_none=True)
        (-bound).backward()
        optimizer.step()
        schedule.step()
        window.append(float(bound.detach()))
        if it % period == 0 or it == iters:
            val_bound = float(np.mean(mean_bound(val, val_batches)))
            history.append((it, float(np.mean(window)), val_bound))
            window = []
            if val_bound > best[0]:
                best = (val_bound, it, {k: v.detach().clone() for k, v in critic.state_dict().items()})
            if log_every and (len(history) % max(1, log_every // period) == 0):
                logger.info("seed %d iter %d/%d: training bound %.4f, validation bound %.4f nats, temperature %.4f",
                            seed, it, iters, history[-1][1], val_bound, float(critic.temperature.detach()))
    val_best, best_iter, state = best
    critic.load_state_dict(state)
    values = np.asarray(mean_bound(test, eval_batches))
    sem = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
    # still rising: the best critic is the last one and validation gained over the last fifth of training
    late = [v for i, _, v in history if i >= 0.8 * iters]
    still_rising = best_iter == iters and len(history) > 1 and late[-1] - late[0] > 0.02 if late else False
    train_at_best = next(t for i, t, _ in history if i == best_iter)
    return {"seed": int(seed), "mi_nats": float(values.mean()), "mi_bits": float(values.mean() / NATS_PER_BIT),
            "eval_sem_nats": sem, "train_mi_nats": train_at_best, "val_mi_nats": val_best, "best_iter": best_iter,
            "still_rising": bool(still_rising), "temperature": float(critic.temperature.detach()),
            "train_items": train.num_items, "val_items": val.num_items, "test_items": test.num_items}


def estimate_mi(source, features_b=None, *, k_est=256, iters=1000, seeds=(0,), form="infonce", holdout=0.25,
                eval_batches=50, lr=1e-3, hidden_dim=None, out_dim=128, temperature=0.1, learn_temperature=True,
                checks=20, device="cpu", log_every=0):
    """Post-training InfoNCE estimate of the MI between two sides of positive pairs (see the module docstring).

    ``source``: a :class:`PairSource`, or an N x D tensor whose rows pair with those of ``features_b``.
    ``seeds``: an int or a list; each seed gives one independent estimate (split, critic, batches).
    ``checks``: validation checks during training (the critic kept is the best one on validation).

    Returns a dict: ``mi_nats``, ``mi_bits`` (mean over seeds), ``mi_nats_std``, ``mi_bits_std`` (standard
    deviation over seeds, 0 for one seed), ``ceiling_nats``, ``ceiling_bits``, ``k_est``, ``form``,
    ``near_ceiling`` (estimate >= 95% of the ceiling), ``seeds``, ``per_seed`` (each: ``seed``, ``mi_nats``,
    ``mi_bits``, ``eval_sem_nats`` (standard error over the test batches), ``train_mi_nats`` and ``val_mi_nats``
    (the bound on training and validation batches at the kept critic), ``best_iter`` (its step),
    ``still_rising`` (validation still improving at the end: more ``iters`` would help), ``temperature``,
    ``train_items``, ``val_items``, ``test_items``),
    ``iters``, ``eval_batches``, ``holdout``, ``checks``, ``critic`` (its settings), ``warnings`` (sentences:
    near the ceiling, critic still improving, fewer test items than K_Est, critic fitting its training pairs
    much better than held-out ones, a negative estimate).
    """
    if isinstance(source, torch.Tensor):
        if features_b is None:
            raise MIError("paired features need features_b, the second member of each pair")
        source = TensorPairs(source, features_b)
    elif features_b is not None:
        raise MIError("features_b is only used with a tensor as the first argument")
    check_arguments(k_est, iters, holdout, eval_batches, form, checks)
    k_est, iters, eval_batches = int(k_est), int(iters), int(eval_batches)
    seeds = seed_list(seeds)
    groups = source.groups()
    if groups is not None:
        sizes = torch.bincount(groups)
        smallest = int(sizes[sizes > 0].min())
        if smallest < MIN_PER_CLASS:
            raise MIError(f"same-class pairing needs at least {MIN_PER_CLASS} items per class (2 each to train, "
                          f"validate and test the critic); one class has {smallest}")
    elif source.num_items < 6:
        raise MIError(f"{source.num_items} items are too few to train, validate and test a critic")
    device = torch.device(device)
    per_seed = [_estimate_one(source, s, k_est=k_est, iters=iters, form=form, holdout=float(holdout),
                              eval_batches=eval_batches, lr=lr, hidden_dim=hidden_dim, out_dim=out_dim,
                              temperature=temperature, learn_temperature=learn_temperature, device=device,
                              log_every=log_every, checks=int(checks))
                for s in seeds]
    values = np.asarray([r["mi_nats"] for r in per_seed])
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    ceiling = ceiling_nats(k_est, form)
    warnings = []
    if mean >= NEAR_CEILING * ceiling:
        name = "log K_Est" if form == "infonce" else "log(2 K_Est - 1)"
        warnings.append(f"the estimate ({mean:.3f} nats) is within {100 * (1 - NEAR_CEILING):.0f}% of the ceiling "
                        f"{name} = {ceiling:.3f} nats: the batch, not the encoder, limits it; raise K_Est")
    rising = [r["seed"] for r in per_seed if r["still_rising"]]
    if rising:
        warnings.append(f"the critic was still improving at the end of training (seeds {', '.join(map(str, rising))}): "
                        "the estimate may be low; raise the iterations")
    smallest = min(r["test_items"] for r in per_seed)
    if smallest < k_est:
        warnings.append(f"only {smallest} test items for batches of K_Est = {k_est} pairs: test batches repeat items "
                        "and the estimate varies with the split (see the spread over seeds); use more images")
    train_mean = float(np.mean([r["train_mi_nats"] for r in per_seed]))
    if train_mean - mean > max(0.2, 0.25 * abs(mean)):
        warnings.append(f"the critic scores its training pairs well above held-out ones ({train_mean:.3f} vs "
                        f"{mean:.3f} nats): it memorises its few training images, so the held-out estimate is a "
                        "loose lower bound; more images would tighten it")
    if mean < 0:
        warnings.append(f"the estimate is negative ({mean / NATS_PER_BIT:.3f} bits): the critic found no dependence "
                        "that holds on held-out items, and a negative InfoNCE bound says only MI >= 0 (read it as "
                        "0, not as an ordering); give the critic more training pairs (more images, or more views "
                        "per image for augmentation pairing)")
    return {"mi_nats": mean, "mi_bits": mean / NATS_PER_BIT, "mi_nats_std": std, "mi_bits_std": std / NATS_PER_BIT,
            "ceiling_nats": ceiling, "ceiling_bits": ceiling / NATS_PER_BIT, "k_est": k_est, "form": form,
            "near_ceiling": bool(mean >= NEAR_CEILING * ceiling), "seeds": seeds, "per_seed": per_seed,
            "iters": iters, "eval_batches": eval_batches, "holdout": float(holdout), "checks": int(checks),
            "warnings": warnings,
            "critic": {"hidden_dim": hidden_width(source.dims[0], hidden_dim), "out_dim": out_dim,
                       "initial_temperature": temperature, "learn_temperature": bool(learn_temperature),
                       "lr": lr, "optimizer": "adam, cosine decay"}}

