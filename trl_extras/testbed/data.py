"""Datasets of the testbed: prompt splits, an SFT corpus, clean and dirty preference pairs.

Everything is seeded and size-configurable; every row of a pair dataset has a stable ``id`` (RewardTrainer drops
over-length pairs silently, so positions are not identities). Datasets come in TRL's standard form
(``prompt``/``completion`` or ``prompt``/``chosen``/``rejected`` strings) or conversational form (message lists)
with ``conversational=True``.
"""

from __future__ import annotations

import math
import operator
import random
from dataclasses import dataclass, field

from .task import (
    DEFAULT_MIX,
    corrupt,
    format_completion,
    gold_reward,
    heuristic_reward,
    make_prompt,
    sample_kind,
)


@dataclass
class TestbedConfig:
    """Size and seed of the testbed task."""

    __test__ = False  # not a pytest test class

    min_digits: int = field(default=3, metadata={"help": "Fewest digits in a prompt."})
    max_digits: int = field(default=6, metadata={"help": "Most digits in a prompt."})
    num_train_prompts: int = field(default=2000, metadata={"help": "Prompts of the train split."})
    num_holdout_prompts: int = field(default=256, metadata={"help": "Prompts of the holdout split (disjoint)."})
    seed: int = field(default=0, metadata={"help": "Seed of every generator of the task."})
    mode_share: float = field(
        default=0.0,
        metadata={"help": "Share of the demonstrators' 'correct' answers (SFT corpus and preference pairs) replaced by "
                  "the systematic wrong mode (duplicates dropped, cut to mode_max_digits): 0 is the plain task; "
                  "the sort_hard task uses it so that the SFT policy's greedy answer is wrong where sampling "
                  "sometimes is right (headroom that needs learning)."},
    )
    mode_max_digits: int = field(default=5, metadata={"help": "Digits the systematic wrong mode keeps."})
    mix: dict | None = field(
        default=None, metadata={"help": "Quality mix of the SFT corpus and pairs, {kind: share}; None: task.DEFAULT_MIX."}
    )

    def __post_init__(self):
        if not 0.0 <= self.mode_share <= 1.0:
            raise ValueError(f"mode_share must be in [0, 1], got {self.mode_share}")
        if self.mode_max_digits < 1:
            raise ValueError(f"mode_max_digits must be >= 1, got {self.mode_max_digits}")


#: The ``sort_hard`` task (issue 13): prompts of 3-10 digits whose demonstrators start from the systematic wrong
#: mode (:func:`~trl_extras.testbed.task.systematic_mode`: duplicates dropped, cut to 4 digits) 70% of the time, so
#: the SFT policy's greedy answer is the mode while samples are sometimes right. ``benchmarks/testbed_headroom.py`` measures it.
SORT_HARD = {
    "min_digits": 3,
    "max_digits": 10,
    "mode_share": 0.7,
    "mode_max_digits": 4,
    "mix": {"correct": 0.60, "swap": 0.15, "drop": 0.10, "random": 0.05, "extra": 0.10},
}


def sort_hard_config(**overrides) -> TestbedConfig:
    """The ``sort_hard`` task's :class:`TestbedConfig` (:data:`SORT_HARD`), with ``overrides`` (e.g. ``seed``)."""
    return TestbedConfig(**{**SORT_HARD, **overrides})


def demonstration(digits: list[int], kind: str, rng: random.Random, config: TestbedConfig) -> tuple[str, list[int]]:
    """``(kind, digits)`` of a demonstrator's answer of quality ``kind``. On a task with ``mode_share``, with that
    probability the demonstrator starts from the systematic wrong mode instead of the sorted prompt and makes the
    same slips on it (a "correct" answer is then the mode itself, kind ``"mode"``): the mode dominates every branch
    point (stop early, skip a repeat), so greedy decoding follows it while samples sometimes leave it. Draws nothing
    extra from ``rng`` when ``mode_share`` is 0, so the plain task's datasets are unchanged."""
    from .task import systematic_mode

    if config.mode_share > 0 and rng.random() < config.mode_share:
        base = systematic_mode(digits, config.mode_max_digits)
        answer = corrupt(base, kind, rng)
        if not answer:  # a slip on a one-digit mode ("5 5 5 >" → " 5", minus its digit): the mode itself, never empty
            return "mode", base
        return ("mode" if kind == "correct" else kind), answer
    return kind, corrupt(digits, kind, rng)


def _prompt_pool(config: TestbedConfig) -> tuple[list[str], list[str]]:
    rng = random.Random(config.seed)
    wanted = config.num_train_prompts + config.num_holdout_prompts
    space = sum(10**k for k in range(config.min_digits, config.max_digits + 1))
    if wanted > space:
        raise ValueError(f"Asked for {wanted} distinct prompts but only {space} exist for these digit counts")
    seen: set[str] = set()
    prompts: list[str] = []
    while len(prompts) < wanted:
        n = rng.randint(config.min_digits, config.max_digits)
        prompt = make_prompt([rng.randrange(10) for _ in range(n)])
        if prompt not in seen:
            seen.add(prompt)
            prompts.append(prompt)
    return prompts[: config.num_train_prompts], prompts[config.num_train_prompts :]


def to_conversational_prompt(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def to_conversational_completion(completion: str) -> list[dict]:
    return [{"role": "assistant", "content": completion}]


def prompt_dataset(split: str = "train", config: TestbedConfig | None = None, conversational: bool = False):
    """A ``datasets.Dataset`` with a ``prompt`` column (GRPO/PPO form) for ``split`` in {"train", "holdout"}."""
    from datasets import Dataset

    train, holdout = _prompt_pool(config or TestbedConfig())
    if split not in ("train", "holdout"):
        raise ValueError(f"split must be 'train' or 'holdout', got {split!r}")
    prompts = train if split == "train" else holdout
    if conversational:
        prompts = [to_conversational_prompt(p) for p in prompts]
    return Dataset.from_dict({"prompt": prompts})


def sft_dataset(
    num_examples: int = 4000,
    config: TestbedConfig | None = None,
    mix: dict[str, float] | None = None,
    conversational: bool = False,
    seed: int | None = None,
):
    """An SFT corpus of prompt-completion pairs on train prompts whose completions spread across gold quality.

    Columns: ``prompt``, ``completion``, ``kind`` (the quality category), ``gold``.
    """
    from datasets import Dataset

    config = config or TestbedConfig()
    train, _ = _prompt_pool(config)
    rng = random.Random(config.seed + 1 if seed is None else seed)
    mix = mix or config.mix or DEFAULT_MIX
    rows = {"prompt": [], "completion": [], "kind": [], "gold": []}
    for _ in range(num_examples):
        prompt = rng.choice(train)
        from .task import parse_prompt

        kind, digits = demonstration(parse_prompt(prompt), sample_kind(rng, mix), rng, config)
        completion = format_completion(digits)
        rows["prompt"].append(to_conversational_prompt(prompt) if conversational else prompt)
        rows["completion"].append(to_conversational_completion(completion) if conversational else completion)
        rows["kind"].append(kind)
        rows["gold"].append(gold_reward(prompt, completion))
    return Dataset.from_dict(rows)


def _sample_pair(rng, prompt, mix, config, max_tries=20):
    """Two completions of distinct gold for one prompt, drawn from ``mix`` (and ``config``'s wrong mode); None if
    every draw ties."""
    from .task import parse_prompt

    digits = parse_prompt(prompt)
    for _ in range(max_tries):
        a = format_completion(demonstration(digits, sample_kind(rng, mix), rng, config)[1])
        b = format_completion(demonstration(digits, sample_kind(rng, mix), rng, config)[1])
        if a != b and gold_reward(prompt, a) != gold_reward(prompt, b):
            return a, b
    return None


def append_pair(rows: dict, id_prefix: str, prompt, chosen, rejected, gold_chosen: float, gold_rejected: float, **extra):
    """Append one preference pair to the column lists ``rows``, with a stable id ``f"{id_prefix}-{row index}"`` and
    both answers' gold; ``extra`` fills the task's own columns (``flipped``, ``easy``, ...). Shared by every task."""
    rows["id"].append(f"{id_prefix}-{len(rows['id'])}")
    rows["prompt"].append(prompt)
    rows["chosen"].append(chosen)
    rows["rejected"].append(rejected)
    rows["gold_chosen"].append(gold_chosen)
    rows["gold_rejected"].append(gold_rejected)
    for key, value in extra.items():
        rows[key].append(value)


def append_dirty_pair(rows: dict, prompt, a, b, heuristic, gold, same=operator.eq, **extra) -> bool:
    """Append the pair (a, b) as the dirty labeller ``heuristic(prompt, completion)`` orders it (the higher-scored
    answer is ``chosen``), with both answers' ``gold`` and ``agrees_with_gold``; a tie (``same(h_a, h_b)``) or two
    identical answers append nothing and return False. Shared by every task's ``dirty_pairs``."""
    ha, hb = heuristic(prompt, a), heuristic(prompt, b)
    if a == b or same(ha, hb):
        return False
    if ha < hb:
        a, b = b, a
    ga, gb = gold(prompt, a), gold(prompt, b)
    append_pair(rows, "dirty", prompt, a, b, ga, gb, **extra, agrees_with_gold=ga > gb)
    return True


def _pairs_to_dataset(rows, conversational):
    from datasets import Dataset

    if conversational:
        rows["prompt"] = [to_conversational_prompt(p) for p in rows["prompt"]]
        rows["chosen"] = [to_conversational_completion(c) for c in rows["chosen"]]
        rows["rejected"] = [to_conversational_completion(c) for c in rows["rejected"]]
    return Dataset.from_dict(rows)


def clean_pairs(
    num_pairs: int = 1000,
    flip_rate: float = 0.1,
    bt_temperature: float | None = None,
    config: TestbedConfig | None = None,
    mix: dict[str, float] | None = None,
    conversational: bool = False,
    seed: int | None = None,
):
    """Clean preference pairs, labelled by the gold reward with label noise — the "AI trainers" data.

    Noise: with ``bt_temperature=None`` each label is flipped with probability ``flip_rate``; with a
    temperature τ labels follow Bradley–Terry, P(a ≻ b) = σ((gold(a) − gold(b)) / τ) (``flip_rate`` ignored).
    Columns: ``id`` (stable, ``"clean-<n>"``), ``prompt``, ``chosen``, ``rejected``, ``gold_chosen``,
    ``gold_rejected``, ``flipped`` (True where the label disagrees with gold).
    """
    if not 0.0 <= flip_rate <= 0.5:
        raise ValueError(f"flip_rate must be in [0, 0.5], got {flip_rate}")
    config = config or TestbedConfig()
    train, _ = _prompt_pool(config)
    rng = random.Random(config.seed + 2 if seed is None else seed)
    mix = mix or config.mix or DEFAULT_MIX
    rows = {k: [] for k in ("id", "prompt", "chosen", "rejected", "gold_chosen", "gold_rejected", "flipped")}
    while len(rows["id"]) < num_pairs:
        prompt = rng.choice(train)
        pair = _sample_pair(rng, prompt, mix, config)
        if pair is None:
            continue
        a, b = pair
        ga, gb = gold_reward(prompt, a), gold_reward(prompt, b)
        if ga < gb:
            a, b, ga, gb = b, a, gb, ga
        if bt_temperature is None:
            flipped = rng.random() < flip_rate
        else:
            flipped = rng.random() >= 1.0 / (1.0 + math.exp(-(ga - gb) / bt_temperature))
        if flipped:
            a, b, ga, gb = b, a, gb, ga
        append_pair(rows, "clean", prompt, a, b, ga, gb, flipped=flipped)
    return _pairs_to_dataset(rows, conversational)


def dirty_pairs(
    num_pairs: int = 5000,
    easy_share: float = 0.3,
    config: TestbedConfig | None = None,
    mix: dict[str, float] | None = None,
    conversational: bool = False,
    seed: int | None = None,
):
    """Many cheap pairs labelled by the biased heuristic — the article's semi-automatic "dirty" data.

    A share ``easy_share`` are trivially easy (the correct answer against a random answer), which a
    reward model separates at once (a random or one-digit answer); the rest are drawn from the SFT mix and labelled by
    :func:`~trl_extras.testbed.task.heuristic_reward`, which prefers padded ascending answers.
    Columns: ``id`` (``"dirty-<n>"``), ``prompt``, ``chosen``, ``rejected``, ``gold_chosen``, ``gold_rejected``,
    ``easy``, ``agrees_with_gold``.
    """
    if not 0.0 <= easy_share <= 1.0:
        raise ValueError(f"easy_share must be in [0, 1], got {easy_share}")
    from .task import parse_prompt

    config = config or TestbedConfig()
    train, _ = _prompt_pool(config)
    rng = random.Random(config.seed + 3 if seed is None else seed)
    mix = mix or config.mix or DEFAULT_MIX
    keys = ("id", "prompt", "chosen", "rejected", "gold_chosen", "gold_rejected", "easy", "agrees_with_gold")
    rows = {k: [] for k in keys}
    while len(rows["id"]) < num_pairs:
        prompt = rng.choice(train)
        easy = rng.random() < easy_share
        if easy:
            digits = parse_prompt(prompt)
            a = format_completion(corrupt(digits, "correct", rng))
            # trivially bad: random digits, or a single random digit (non-empty: an empty answer is a bad *input*
            # to scoring utilities, not a trivially easy pair)
            junk = corrupt(digits, "random", rng)
            b = format_completion(junk if rng.random() < 0.5 else junk[:1])
            if a == b:
                continue
        else:
            pair = _sample_pair(rng, prompt, mix, config)
            if pair is None:
                continue
            a, b = pair
        append_dirty_pair(rows, prompt, a, b, heuristic_reward, gold_reward, easy=easy)
    return _pairs_to_dataset(rows, conversational)


def hacked_completions(prompts, seed: int = 0) -> list[str]:
    """Off-distribution completions that exploit the heuristic (long ascending runs), one per prompt."""
    from .task import _text, parse_prompt

    rng = random.Random(seed)
    return [format_completion(corrupt(parse_prompt(_text(p)), "hack", rng)) for p in prompts]
