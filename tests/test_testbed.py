"""The gold-reward testbed: gold and heuristic properties, pair generators' noise and bias, determinism."""

import numpy as np
import pytest

from trl_extras.testbed import (
    TestbedConfig,
    clean_pairs,
    dirty_pairs,
    gold_reward,
    gold_reward_fn,
    hacked_completions,
    heuristic_reward,
    prompt_dataset,
    sft_dataset,
)
from trl_extras.testbed.task import _lcs, parse_prompt

SMALL = TestbedConfig(num_train_prompts=300, num_holdout_prompts=50, seed=3)


def test_gold_reward_values():
    assert gold_reward("7 3 9 1 >", " 1 3 7 9") == 1.0
    assert gold_reward("7 3 9 1 >", "") == 0.0
    # one adjacent swap keeps 3 of 4 in order
    assert gold_reward("7 3 9 1 >", " 3 1 7 9") == pytest.approx(0.75)
    # extra digits are penalised like missing ones
    assert gold_reward("7 3 9 1 >", " 1 3 7 9 9") == pytest.approx(0.8)
    assert gold_reward("7 3 9 1 >", " 1 3 7") == pytest.approx(0.75)
    # non-digit tokens count as errors
    assert gold_reward("7 3 >", " 3 x 7") == pytest.approx(2 / 3)


def test_gold_reward_conversational_matches_standard():
    prompt, completion = "5 2 8 >", " 2 5 8"
    conv = gold_reward([{"role": "user", "content": prompt}], [{"role": "assistant", "content": completion}])
    assert conv == gold_reward(prompt, completion) == 1.0


def test_gold_reward_is_lcs_over_longer_length_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(200):
        digits = list(rng.integers(0, 10, size=rng.integers(3, 7)))
        comp = list(rng.integers(0, 10, size=rng.integers(0, 9)))
        prompt = " ".join(map(str, digits)) + " >"
        target = sorted(digits)
        # brute-force LCS by recursion on small inputs
        from functools import lru_cache

        def lcs_of(a, b):
            @lru_cache(None)
            def lcs(i, j):
                if i == len(a) or j == len(b):
                    return 0
                if a[i] == b[j]:
                    return 1 + lcs(i + 1, j + 1)
                return max(lcs(i + 1, j), lcs(i, j + 1))

            return lcs(0, 0)

        expected = lcs_of(tuple(comp), tuple(target)) / max(len(comp), len(target))
        assert gold_reward(prompt, "".join(f" {d}" for d in comp)) == pytest.approx(expected)
        assert 0.0 <= expected <= 1.0
        assert _lcs(comp, target) == lcs_of(tuple(comp), tuple(target))


def test_batched_reward_fn_signature_and_errors():
    out = gold_reward_fn(prompts=["3 1 >", "2 1 >"], completions=[" 1 3", " 2 1"], trainer_state=None)
    assert out == [1.0, 0.5]
    with pytest.raises(ValueError):
        gold_reward_fn(["3 1 >"], [" 1 3", " 1"])
    with pytest.raises(ValueError, match="Not a testbed prompt"):
        gold_reward("hello", " 1")


def test_heuristic_is_hackable_off_distribution():
    prompts = prompt_dataset("holdout", SMALL)["prompt"]
    hacks = hacked_completions(prompts)
    correct = ["".join(f" {d}" for d in sorted(parse_prompt(p))) for p in prompts]
    h_gain = [heuristic_reward(p, h) - heuristic_reward(p, c) for p, h, c in zip(prompts, hacks, correct)]
    g_gain = [gold_reward(p, h) - gold_reward(p, c) for p, h, c in zip(prompts, hacks, correct)]
    assert np.mean(np.array(h_gain) > 0) > 0.95  # the heuristic prefers the hack...
    assert np.all(np.array(g_gain) < 0)  # ...which gold always ranks below the correct answer


def test_prompt_splits_are_disjoint_and_seeded():
    train = prompt_dataset("train", SMALL)["prompt"]
    hold = prompt_dataset("holdout", SMALL)["prompt"]
    assert len(train) == 300 and len(hold) == 50
    assert not set(train) & set(hold)
    assert prompt_dataset("train", SMALL)["prompt"] == train
    other = prompt_dataset("train", TestbedConfig(num_train_prompts=300, num_holdout_prompts=50, seed=4))["prompt"]
    assert other != train
    conv = prompt_dataset("holdout", SMALL, conversational=True)["prompt"]
    assert conv[0] == [{"role": "user", "content": hold[0]}]


def test_sft_corpus_spreads_over_gold_quality():
    data = sft_dataset(2000, SMALL)
    gold = np.array(data["gold"])
    assert set(data["kind"]) == {"correct", "swap", "drop", "random", "extra"}
    assert 0.3 < (gold == 1.0).mean() < 0.5  # ~40% correct answers
    assert (gold < 0.5).mean() > 0.03 and np.std(gold) > 0.15
    assert gold.tolist() == [gold_reward(p, c) for p, c in zip(data["prompt"], data["completion"])]


@pytest.mark.parametrize("flip_rate", [0.0, 0.1, 0.3])
def test_clean_pairs_flip_rate(flip_rate):
    data = clean_pairs(3000, flip_rate=flip_rate, config=SMALL)
    flipped = np.array(data["flipped"])
    gc, gr = np.array(data["gold_chosen"]), np.array(data["gold_rejected"])
    assert np.all((gc < gr) == flipped)  # flipped means the label disagrees with gold
    assert abs(flipped.mean() - flip_rate) < 0.025
    assert len(set(data["id"])) == 3000


def test_clean_pairs_bradley_terry_noise_depends_on_margin():
    data = clean_pairs(4000, bt_temperature=0.1, config=SMALL)
    margin = np.abs(np.array(data["gold_chosen"]) - np.array(data["gold_rejected"]))
    flipped = np.array(data["flipped"])
    small, large = margin < np.median(margin), margin >= np.median(margin)
    assert flipped[small].mean() > flipped[large].mean()


def test_dirty_pairs_bias_and_easy_share():
    data = dirty_pairs(4000, easy_share=0.3, config=SMALL)
    easy = np.array(data["easy"])
    agree = np.array(data["agrees_with_gold"])
    assert abs(easy.mean() - 0.3) < 0.03
    assert agree[easy].mean() == 1.0  # trivially easy pairs are always right
    assert 0.8 < agree[~easy].mean() < 0.97  # mostly right on the SFT distribution, but biased
    # the disagreements are the heuristic's bias: the chosen answer is longer (padding)
    chosen_len = np.array([len(c.split()) for c in data["chosen"]])
    rejected_len = np.array([len(c.split()) for c in data["rejected"]])
    assert (chosen_len[~agree] > rejected_len[~agree]).mean() > 0.8


def test_pair_generators_are_deterministic_and_conversational():
    a = dirty_pairs(200, config=SMALL)
    b = dirty_pairs(200, config=SMALL)
    assert a.to_dict() == b.to_dict()
    conv = clean_pairs(20, config=SMALL, conversational=True)
    std = clean_pairs(20, config=SMALL)
    assert conv[0]["prompt"] == [{"role": "user", "content": std[0]["prompt"]}]
    assert conv[0]["chosen"] == [{"role": "assistant", "content": std[0]["chosen"]}]


def test_bad_config_errors():
    with pytest.raises(ValueError):
        clean_pairs(10, flip_rate=0.7)
    with pytest.raises(ValueError):
        dirty_pairs(10, easy_share=1.5)
    with pytest.raises(ValueError, match="distinct prompts"):
        prompt_dataset("train", TestbedConfig(min_digits=1, max_digits=1, num_train_prompts=20))


def test_systematic_mode():
    from trl_extras.testbed.task import systematic_mode

    assert systematic_mode([7, 3, 7, 9, 1, 8, 2]) == [1, 2, 3, 7, 8]  # duplicate 7 dropped, cut to 5
    assert systematic_mode([7, 3, 7, 9, 1, 8, 2], max_digits=3) == [1, 2, 3]
    assert systematic_mode([4, 2, 9]) == [2, 4, 9]  # short and without repeats: right


def test_sort_hard_demonstrations_carry_the_wrong_mode():
    """On sort_hard, 'correct' demonstrations are the systematic mode with probability mode_share; the pairs see the
    same demonstrators (so reward models can learn the mode is worse) and gold still judges the truth."""
    from trl_extras.testbed import sort_hard_config, task_module
    from trl_extras.testbed.task import systematic_mode

    cfg = sort_hard_config(seed=3, num_train_prompts=300, num_holdout_prompts=50)
    assert task_module("sort_hard").TaskConfig(seed=3, num_train_prompts=300, num_holdout_prompts=50) == cfg
    data = sft_dataset(3000, cfg)
    kinds = np.array(data["kind"])
    meant_right = np.isin(kinds, ["correct", "mode"])
    assert abs((kinds == "mode")[meant_right].mean() - cfg.mode_share) < 0.04
    for p, c, k in zip(data["prompt"], data["completion"], kinds):
        if k == "mode":
            assert c.split() == [str(d) for d in systematic_mode(parse_prompt(p), cfg.mode_max_digits)]
    mode_gold = np.array(data["gold"])[kinds == "mode"]
    assert (mode_gold < 1).mean() > 0.5 and mode_gold.mean() < 0.85  # mostly wrong: long prompts, repeats
    assert all(c.split() for c in data["completion"])  # a slip on a one-digit mode never leaves an empty answer
    from trl_extras.testbed.data import demonstration

    rng = __import__("random").Random(0)
    assert all(demonstration([5, 5, 5], "drop", rng, sort_hard_config(mode_share=1.0))[1] == [5] for _ in range(5))
    lengths = [len(parse_prompt(p)) for p in prompt_dataset("holdout", cfg)["prompt"]]
    assert min(lengths) == cfg.min_digits and max(lengths) == cfg.max_digits
    # pairs where a right answer meets the mode: gold prefers the right one
    pairs = clean_pairs(2000, flip_rate=0.0, config=cfg)
    modes = {" " + " ".join(str(d) for d in systematic_mode(parse_prompt(p), cfg.mode_max_digits)): p
             for p in pairs["prompt"]}
    assert any(r["rejected"] in modes and modes[r["rejected"]] == r["prompt"] for r in pairs)


def test_plain_task_datasets_and_cache_key_unchanged_by_mode_fields():
    """mode_share=0 draws nothing extra: the plain task's corpus is what it was, and the SFT cache key too."""
    from trl_extras.testbed import SFTBuildConfig
    from trl_extras.testbed.policy import _key

    data = sft_dataset(50, SMALL)
    assert "mode" not in set(data["kind"])
    assert _key(SFTBuildConfig()) == "f69f08a07599"  # the key of the cache built before the mode fields existed
    assert _key(SFTBuildConfig(testbed=TestbedConfig(mode_share=0.5))) != _key(SFTBuildConfig())
    with pytest.raises(ValueError, match="mode_share"):
        TestbedConfig(mode_share=1.5)
