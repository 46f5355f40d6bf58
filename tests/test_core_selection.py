"""Elite selection (trl_extras.core.selection) against brute-force per-group loops."""

import random

import pytest
import torch

from trl_extras.core.selection import (
    dedupe,
    quantile_schedule,
    select_elites,
    select_quantile,
    select_threshold,
    select_top_k,
)


def _random_case(seed, n_groups=5, max_size=7, ties=True):
    rng = random.Random(seed)
    groups, rewards = [], []
    for g in range(n_groups):
        for _ in range(rng.randint(1, max_size)):
            groups.append(g)
            rewards.append(float(rng.randint(0, 3)) if ties else rng.random())
    perm = list(range(len(groups)))
    rng.shuffle(perm)  # groups interleaved, as after any shuffle
    return torch.tensor([rewards[i] for i in perm]), torch.tensor([groups[i] for i in perm])


def _brute_top_k(rewards, groups, k, candidates):
    mask = [False] * len(rewards)
    for g in set(groups.tolist()):
        idx = [i for i in range(len(rewards)) if groups[i] == g and candidates[i]]
        idx.sort(key=lambda i: (-rewards[i].item(), i))  # ties -> earlier sample
        for i in idx[:k]:
            mask[i] = True
    return torch.tensor(mask)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_k_matches_brute_force(seed, k):
    rewards, groups = _random_case(seed)
    candidates = torch.tensor([random.Random(seed + i).random() > 0.2 for i in range(len(rewards))])
    for cand in (None, candidates):
        c = torch.ones(len(rewards), dtype=torch.bool) if cand is None else cand
        got = select_top_k(rewards, groups, k, cand)
        assert torch.equal(got, _brute_top_k(rewards, groups, k, c))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("q", [0.0, 0.5, 0.75, 1.0])
def test_quantile_matches_brute_force(seed, q):
    rewards, groups = _random_case(seed, ties=seed % 2 == 0)
    got = select_quantile(rewards, groups, q)
    for g in set(groups.tolist()):
        members = groups == g
        vals = sorted(rewards[members].tolist())
        # linear-interpolation quantile by hand
        pos = q * (len(vals) - 1)
        lo, hi = int(pos), min(int(pos) + 1, len(vals) - 1)
        cut = vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)
        expected = members & (rewards >= cut - 1e-12)
        assert torch.equal(got & members, expected)
        assert (got & members & (rewards == rewards[members].max())).any()  # the best is always kept


def test_threshold_and_dedupe():
    rewards = torch.tensor([0.1, 0.5, 0.9, 0.5])
    assert select_threshold(rewards, 0.5).tolist() == [False, True, True, True]
    groups = torch.tensor([0, 0, 1, 0])
    texts = ["a", "b", "a", "a"]
    assert dedupe(texts, groups).tolist() == [True, True, True, False]  # "a" in group 1 is new
    chats = [[{"role": "assistant", "content": t}] for t in texts]
    assert dedupe(chats, groups).tolist() == [True, True, True, False]


def test_select_elites_combines_rules():
    rewards = torch.tensor([0.9, 0.9, 0.2, 0.0, 0.8, 0.3])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    texts = ["x", "x", "y", "", "z", "w"]
    valid = torch.tensor([t != "" for t in texts])
    # top-2 among distinct non-empty: group 0 -> "x"(first), "y"; group 1 -> "z", "w"
    got = select_elites(rewards, groups, top_k=2, dedupe_texts=texts, valid=valid)
    assert got.tolist() == [True, False, True, False, True, True]
    got = select_elites(rewards, groups, top_k=2, threshold=0.5, dedupe_texts=texts, valid=valid)
    assert got.tolist() == [True, False, False, False, True, False]
    # without dedupe the duplicate takes the second slot
    got = select_elites(rewards, groups, top_k=2)
    assert got.tolist() == [True, True, False, False, True, True]
    with pytest.raises(ValueError, match="at least one elite rule"):
        select_elites(rewards, groups)


def test_bad_inputs():
    with pytest.raises(ValueError, match="NaN"):
        select_top_k(torch.tensor([1.0, float("nan")]), torch.tensor([0, 0]), 1)
    with pytest.raises(ValueError, match="same length"):
        select_top_k(torch.tensor([1.0, 2.0]), torch.tensor([0]), 1)
    with pytest.raises(ValueError, match="top_k"):
        select_top_k(torch.tensor([1.0]), torch.tensor([0]), 0)
    with pytest.raises(ValueError, match="quantile"):
        select_quantile(torch.tensor([1.0]), torch.tensor([0]), 1.5)


def test_quantile_schedule():
    assert quantile_schedule(0, 3, 0.5, 0.9) == 0.5
    assert quantile_schedule(1, 3, 0.5, 0.9) == pytest.approx(0.7)
    assert quantile_schedule(2, 3, 0.5, 0.9) == pytest.approx(0.9)
    assert quantile_schedule(0, 1, 0.5, 0.9) == 0.5
    with pytest.raises(ValueError):
        quantile_schedule(3, 3, 0.5, 0.9)
