"""Diversity measures (trl_extras.core.diversity) against brute force."""

import itertools

import pytest
import torch

from trl_extras.core.diversity import (
    distinct_n,
    grouped_distinct_n,
    mean_token_entropy,
    unique_fraction,
)


def test_distinct_n_by_hand():
    texts = ["a b a b", "a b c"]
    # unigrams: a b a b a b c -> 3 unique / 7
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)
    # bigrams: ab ba ab | ab bc -> {ab, ba, bc} 3 / 5
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)
    assert distinct_n(["a"], 2) == 0.0  # no bigram at all
    assert distinct_n([[{"role": "assistant", "content": "x y"}]], 1) == 1.0
    with pytest.raises(ValueError):
        distinct_n(texts, 0)


def test_distinct_n_brute_force_random():
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(str(int(t)) for t in torch.randint(0, 4, (int(torch.randint(0, 8, (1,), generator=g)),),
                                                         generator=g)) for _ in range(20)]
    for n in (1, 2, 3):
        grams = list(itertools.chain.from_iterable(
            [tuple(t.split()[i:i + n]) for i in range(len(t.split()) - n + 1)] for t in texts))
        assert distinct_n(texts, n) == pytest.approx(len(set(grams)) / len(grams))


def test_grouped_and_unique_fraction():
    texts = ["1 2", "1 2", "3 4", "5 6"]
    groups = [0, 0, 1, 1]
    assert grouped_distinct_n(texts, groups, 1) == pytest.approx((2 / 4 + 4 / 4) / 2)
    assert unique_fraction(texts, groups) == pytest.approx((1 / 2 + 2 / 2) / 2)


def test_mean_token_entropy_masks():
    ent = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert mean_token_entropy(ent, mask) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no token"):
        mean_token_entropy(ent, torch.zeros_like(mask))


def test_completion_entropies_match_brute_force(tiny_paths):
    """Brute force over the full softmax, with the position ids generation uses for a left-padded row."""
    from transformers import AutoModelForCausalLM

    from trl_extras.modeling.lm import completion_entropies, position_ids_from_mask

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_paths["policy"])
    ids = torch.randint(5, 20, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding
    got = completion_entropies(model, ids, mask, completion_length=3, batch_size=2, chunk_size=2)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    p = logits[:, -4:-1].double().softmax(-1)
    expected = -(p * p.log()).sum(-1)
    assert got.shape == (3, 3)
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-4)


def test_completion_entropies_are_the_kernels(tiny_paths):
    """One entropy path: the same numbers as completion_token_stats' entropy (the rollout statistics)."""
    from transformers import AutoModelForCausalLM

    from trl_extras.modeling.lm import completion_entropies, completion_token_stats

    model = AutoModelForCausalLM.from_pretrained(tiny_paths["policy"])
    ids = torch.randint(5, 20, (4, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    got = completion_entropies(model, ids, mask, completion_length=4, batch_size=4, temperature=0.7)
    ref = completion_token_stats(model, None, ids, mask, 4, temperature=0.7, with_exact_kl=False)["entropy"]
    torch.testing.assert_close(got, ref.float())
