"""Samples come from softmax(logits / T), whatever the checkpoint's generation_config says (issue 10, item 1).

A 1000-token tiny Llama is saved with a Qwen2.5-Instruct-like ``generation_config.json`` (``do_sample=True,
top_k=20, top_p=0.8, repetition_penalty=1.05``); its head is scaled so that most of the next-token mass lies outside
the top 50. First tokens sampled through the shared path (and through PPOTrainer's rollout) are compared with the
model's own softmax(logits / T): the mass outside the top-k and a chi-square test over equal-mass bins.
"""

import math

import pytest
import torch
from datasets import Dataset
from helpers import cpu_config
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from trl_extras.modeling.generation import (
    checkpoint_generation_config_hidden,
    generate_rollouts,
    off_policy_sampling_settings,
    sampling_generation_config,
)

VOCAB = 1000
TEMPERATURE = 0.8
PROMPT = "w1 w2 w3"


def _big_vocab_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for i in range(VOCAB - len(specials)):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>"
    )


def _save_model(path, generation_config: dict, head_scale: float = 8.0, seed: int = 0) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _big_vocab_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # spread the logits out: a heavy head, most mass still outside the top 50
        model.lm_head.weight.mul_(head_scale)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        **generation_config,
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


QWEN_LIKE = dict(do_sample=True, top_k=20, top_p=0.8, repetition_penalty=1.05, temperature=0.7)


@pytest.fixture(scope="module")
def qwen_like_path(tmp_path_factory):
    return _save_model(tmp_path_factory.mktemp("qwen_like"), QWEN_LIKE)


def _first_token_probs(model, tok, prompt, temperature):
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits[0, -1].float()
    return torch.softmax(logits / temperature, -1)


def _chi2_equal_mass_bins(probs: torch.Tensor, samples: torch.Tensor, n_bins: int = 20):
    """Chi-square statistic and p-value of ``samples`` against ``probs``, tokens binned into ~equal-mass bins
    (sorted by probability, so rare tokens share bins)."""
    from scipy.stats import chi2

    order = torch.argsort(probs, descending=True)
    cum = torch.cumsum(probs[order], 0)
    bin_of_rank = torch.clamp((cum * n_bins).ceil().long() - 1, 0, n_bins - 1)
    bin_of_token = torch.empty_like(bin_of_rank)
    bin_of_token[order] = bin_of_rank
    expected = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bin_of_token, probs.double())
    observed = torch.bincount(bin_of_token[samples], minlength=n_bins).double()
    keep = expected > 0
    expected = expected[keep] * len(samples)
    observed = observed[keep]
    stat = float(((observed - expected) ** 2 / expected).sum())
    dof = int(keep.sum()) - 1
    return stat, float(chi2.sf(stat, dof)), dof


def _check_samples_match(probs, samples, label):
    n = len(samples)
    top50 = torch.topk(probs, 50).indices
    mass_outside = 1.0 - float(probs[top50].sum())
    outside_rate = float((~torch.isin(samples, top50)).double().mean())
    se = math.sqrt(mass_outside * (1 - mass_outside) / n)
    stat, p, dof = _chi2_equal_mass_bins(probs, samples)
    print(
        f"[{label}] n={n} distinct first tokens={len(torch.unique(samples))} "
        f"mass outside top-50={mass_outside:.3f} sampled outside top-50={outside_rate:.3f} "
        f"chi2={stat:.3f} (dof {dof}) p={p:.4g}"
    )
    assert mass_outside > 0.5, "test set-up: the head must spread the mass beyond the top 50"
    assert abs(outside_rate - mass_outside) < 5 * se, (outside_rate, mass_outside)
    assert p > 1e-4, f"sampled first tokens do not follow softmax(logits/T): chi2={stat:.1f}, p={p:.2g}"


def test_builder_sets_every_processor_off():
    config = sampling_generation_config(max_new_tokens=4, temperature=0.7, pad_token_id=0, eos_token_id=2)
    assert config.top_k == 0 and config.top_p == 1.0 and config.min_p is None and config.typical_p == 1.0
    assert config.repetition_penalty == 1.0 and config.no_repeat_ngram_size == 0 and config.min_length == 0
    assert config.epsilon_cutoff == 0.0 and config.eta_cutoff == 0.0 and config.num_beams == 1
    assert off_policy_sampling_settings(config) == {}
    user = sampling_generation_config(max_new_tokens=4, top_k=20, top_p=0.8, min_p=0.05, repetition_penalty=1.1)
    assert off_policy_sampling_settings(user) == {"top_k": 20, "top_p": 0.8, "min_p": 0.05, "repetition_penalty": 1.1}
    greedy = sampling_generation_config(max_new_tokens=4, temperature=0.0)
    assert greedy.do_sample is False and off_policy_sampling_settings(greedy) == {"do_sample": False}
    with pytest.raises(ValueError, match="not_a_field"):
        sampling_generation_config(max_new_tokens=4, not_a_field=3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        sampling_generation_config(max_new_tokens=0)


def test_checkpoint_generation_config_hidden_and_restored(qwen_like_path):
    model = AutoModelForCausalLM.from_pretrained(qwen_like_path)
    original = model.generation_config
    assert original.top_k == 20
    with checkpoint_generation_config_hidden(model):
        assert model.generation_config.top_k is None and model.generation_config.repetition_penalty is None
    assert model.generation_config is original


def test_shared_path_samples_softmax_over_temperature(qwen_like_path):
    model = AutoModelForCausalLM.from_pretrained(qwen_like_path)
    tok = AutoTokenizer.from_pretrained(qwen_like_path)
    probs = _first_token_probs(model, tok, PROMPT, TEMPERATURE)
    torch.manual_seed(0)
    rollout = generate_rollouts(
        model, tok, [PROMPT], max_new_tokens=1, temperature=TEMPERATURE, num_generations=3000, batch_size=1000
    )
    _check_samples_match(probs, rollout.completion_ids[:, 0], "generate_rollouts")
    # an explicit user truncation still applies (allowed, and PPO warns about it)
    torch.manual_seed(0)
    truncated = generate_rollouts(
        model, tok, [PROMPT], max_new_tokens=1, temperature=TEMPERATURE, top_k=20, num_generations=500, batch_size=500
    )
    assert torch.isin(truncated.completion_ids[:, 0], torch.topk(probs, 20).indices).all()


def test_checkpoint_repetition_penalty_not_applied(tmp_path):
    """A checkpoint's repetition_penalty would push down the tokens already in the prompt: it must not act."""
    path = _save_model(tmp_path / "rep", dict(do_sample=True, top_k=0, repetition_penalty=5.0))
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    # the prompt holds 50 likely next tokens (the top 50 after such a prompt): each is then "already seen"
    prompt = PROMPT
    for _ in range(2):
        seen = torch.topk(_first_token_probs(model, tok, prompt, 1.0), 50).indices
        prompt = PROMPT + " " + " ".join(tok.convert_ids_to_tokens(seen.tolist()))
    probs = _first_token_probs(model, tok, prompt, 1.0)
    seen_ids = torch.tensor(sorted(set(tok(prompt)["input_ids"])))
    mass_seen = float(probs[seen_ids].sum())
    torch.manual_seed(1)
    rollout = generate_rollouts(model, tok, [prompt], max_new_tokens=1, num_generations=1000, batch_size=1000)
    rate_seen = float(torch.isin(rollout.completion_ids[:, 0], seen_ids).double().mean())
    se = math.sqrt(mass_seen * (1 - mass_seen) / 1000)
    print(f"[repetition] mass on prompt tokens={mass_seen:.3f} sampled rate={rate_seen:.3f}")
    assert mass_seen > 0.08, "test set-up: the prompt's tokens must carry mass"
    assert abs(rate_seen - mass_seen) < 5 * se, (rate_seen, mass_seen)


def _reward(completions, **kwargs):
    return [0.0] * len(completions)


def test_ppo_rollout_samples_softmax_over_temperature(qwen_like_path, tmp_path, caplog):
    import logging

    from trl_extras import PPOConfig, PPOTrainer

    n = 1024
    args = cpu_config(
        PPOConfig, tmp_path, per_device_train_batch_size=n, max_completion_length=1, temperature=TEMPERATURE,
        max_steps=1, generation_chunk_size=512, value_model_init="policy", seed=0,
    )
    with caplog.at_level(logging.WARNING, logger="trl_extras.trainers.ppo.trainer"):
        trainer = PPOTrainer(qwen_like_path, _reward, args=args, train_dataset=Dataset.from_dict({"prompt": [PROMPT] * n}))
    assert not any("off-policy" in r.message for r in caplog.records)
    model = trainer.policy
    probs = _first_token_probs(model, trainer._tokenizer, PROMPT, TEMPERATURE)
    torch.manual_seed(0)
    batch = trainer._rollout([{"prompt": PROMPT}] * n, "eval")
    _check_samples_match(probs, batch.completion_ids[:, 0].cpu(), "PPOTrainer._rollout")


@pytest.mark.parametrize(
    "setting", [dict(top_k=20), dict(top_p=0.9), dict(min_p=0.05), dict(repetition_penalty=1.1),
                dict(generation_kwargs={"no_repeat_ngram_size": 2}), dict(generation_kwargs={"top_k": 7})]
)
def test_ppo_warns_on_explicit_truncation(tiny_paths, tmp_path, caplog, setting):
    import logging

    from trl_extras import PPOConfig, PPOTrainer

    args = cpu_config(PPOConfig, tmp_path, per_device_train_batch_size=2, max_completion_length=2, max_steps=1, **setting)
    with caplog.at_level(logging.WARNING, logger="trl_extras.trainers.ppo.trainer"):
        PPOTrainer(tiny_paths["policy"], _reward, args=args, train_dataset=Dataset.from_dict({"prompt": ["1 >"] * 2}))
    messages = [r.message for r in caplog.records if "off-policy" in r.message]
    assert len(messages) == 1
    key = next(iter(setting if "generation_kwargs" not in setting else setting["generation_kwargs"]))
    assert key in messages[0]


def test_ppo_rejects_generation_kwargs_it_owns(tiny_paths, tmp_path):
    from trl_extras import PPOConfig, PPOTrainer

    args = cpu_config(PPOConfig, tmp_path, per_device_train_batch_size=2, max_completion_length=2, max_steps=1,
                      generation_kwargs={"temperature": 0.5})
    with pytest.raises(ValueError, match="temperature"):
        PPOTrainer(tiny_paths["policy"], _reward, args=args, train_dataset=Dataset.from_dict({"prompt": ["1 >"] * 2}))
    args = cpu_config(PPOConfig, tmp_path, per_device_train_batch_size=2, max_completion_length=2, max_steps=1,
                      generation_kwargs={"not_a_field": 1})
    with pytest.raises(ValueError, match="not_a_field"):
        PPOTrainer(tiny_paths["policy"], _reward, args=args, train_dataset=Dataset.from_dict({"prompt": ["1 >"] * 2}))


def test_every_sampler_goes_through_the_shared_path():
    """Only modeling/generation.py calls ``generate`` (PolicyAndValueModel forwards it): CEM, the early-stopping callback,
    side_by_side, synthesize_preference_pairs, the pipeline's evaluation and PPO all sample through
    ``generate_rollouts`` (directly or through ``evaluation/measure.measure_policy``, the shared measuring path) and so
    through ``sampling_generation_config``."""
    import re
    from pathlib import Path

    import trl_extras

    root = Path(trl_extras.__file__).parent
    callers = {
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if re.search(r"\.generate\(", p.read_text()) and p.name != "value.py"
    }
    assert callers == {"modeling/generation.py"}
    users = {str(p.relative_to(root)) for p in root.rglob("*.py") if "generate_rollouts(" in p.read_text()}
    assert "evaluation/measure.py" in users
    users |= {str(p.relative_to(root)) for p in root.rglob("*.py") if "measure_policy(" in p.read_text()}
    for module in ("trainers/ppo/trainer.py", "trainers/cem/trainer.py", "callbacks/reward_early_stopping.py",
                   "evaluation/side_by_side.py", "evaluation/synthetic_pairs.py", "pipeline/evaluate.py"):
        assert module in users


def test_exact_kl_grpo_samples_softmax_over_temperature(tmp_path):
    """TRL's GRPO sets temperature/top_k/top_p/min_p/repetition_penalty itself; a checkpoint's other fields
    (here typical_p and no_repeat_ngram_size) must not act either."""
    from trl_extras.trainers.exact_kl_grpo import ExactKLGRPOConfig, ExactKLGRPOTrainer

    path = _save_model(tmp_path / "leaky", dict(QWEN_LIKE, typical_p=0.3, no_repeat_ngram_size=1))
    args = cpu_config(ExactKLGRPOConfig, tmp_path / "out", per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=1, temperature=TEMPERATURE, max_steps=1, seed=0)
    trainer = ExactKLGRPOTrainer(model=path, reward_funcs=_reward, args=args,
                                 train_dataset=Dataset.from_dict({"prompt": [PROMPT] * 4}))
    probs = _first_token_probs(trainer.model, AutoTokenizer.from_pretrained(path), PROMPT, TEMPERATURE)
    torch.manual_seed(0)
    completion_ids = trainer._generate([PROMPT] * 512)[1]  # GRPO's (private) generation: fails loudly if it changes
    _check_samples_match(probs, torch.tensor([c[0] for c in completion_ids]), "ExactKLGRPOTrainer._generate")
