"""A real-text task with a known gold reward for real chat models: short arithmetic questions in chat form.

Prompt (conversational by default): ``[{"role": "user", "content": "What is 25 + 17? Answer with the number only."}]``.

* ``gold_reward`` (the verifier): 1.0 when the **last integer** of the completion equals the exact answer, else 0.0
  (``"25 + 17 = 42"`` and ``"42"`` are both right; ``"42, no 43"`` is wrong).
* ``heuristic_reward`` (the "dirty" labeller, the article's bias): it prefers a nicely formatted, longer answer
  regardless of correctness — 0.4 for restating the question as an equation (``"a + b = x"``), up to 0.3 for length
  (one point per word up to 12 words), and 0.3 for a final number that is merely *plausible* (within 10% of the
  answer or 5 of it). A wordy ``"To add them ... 25 + 17 = 32."`` beats a bare correct ``"42"``.

Difficulty (``benchmarks/smollm2_headroom.py``, SmolLM2-135M-Instruct, 32 holdout prompts, best-of-8 at T=1):
the default, operands 1..30 (``a + b``), gives greedy 0.31, best-of-8 0.41 (24 new tokens); two-digit operands
(10..99) give greedy 0.22, best-of-8 0.44 (24 new tokens; 0.19 and 0.28 with 16). 32 prompts: +-0.15 noise.

The datasets mirror the sort-digits testbed (:mod:`trl_extras.testbed.data`): prompt splits, an SFT corpus of graded
quality, gold-labelled "clean" pairs with label noise and heuristic-labelled "dirty" pairs with easy pairs, in
standard (strings) or conversational (message lists) form, every pair row with a stable ``id``.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field

from .data import append_dirty_pair, append_pair
from .task import _text, batched

QUESTION = "What is {expr}? Answer with the number only."
_QUESTION_RE = re.compile(r"What is ([0-9+\- ]+)\?")
_INT_RE = re.compile(r"-?\d+")


@dataclass
class ArithmeticConfig:
    """Difficulty, size and seed of the arithmetic task."""

    __test__ = False

    min_value: int = field(default=1, metadata={"help": "Smallest operand."})
    max_value: int = field(default=30, metadata={"help": "Largest operand."})
    num_terms: int = field(default=2, metadata={"help": "Operands per question (2: 'a + b'; 3: 'a + b - c')."})
    operators: str = field(default="+", metadata={"help": "Operators drawn between operands, e.g. '+' or '+-'."})
    num_train_prompts: int = field(default=512, metadata={"help": "Prompts of the train split."})
    num_holdout_prompts: int = field(default=256, metadata={"help": "Prompts of the holdout split (disjoint)."})
    conversational: bool = field(default=True, metadata={"help": "Chat-form (message list) prompts and answers."})
    seed: int = field(default=0, metadata={"help": "Seed of every generator of the task."})

    def __post_init__(self):
        if self.num_terms < 2:
            raise ValueError(f"num_terms must be >= 2, got {self.num_terms}")
        if not self.operators or set(self.operators) - {"+", "-"}:
            raise ValueError(f"operators must be a non-empty string of '+' and '-', got {self.operators!r}")
        if not 0 <= self.min_value <= self.max_value:
            raise ValueError(f"Need 0 <= min_value <= max_value, got {self.min_value}, {self.max_value}")


# ---------------------------------------------------------------------------------------------------------------
# Prompts, gold, heuristic
# ---------------------------------------------------------------------------------------------------------------
def make_question(terms: list[int], ops: list[str]) -> str:
    expr = str(terms[0]) + "".join(f" {o} {t}" for o, t in zip(ops, terms[1:]))
    return QUESTION.format(expr=expr)


def parse_question(prompt) -> tuple[str, int]:
    """``(expression, exact answer)`` of a prompt (string or message list). Raises on a prompt not of the task."""
    text = _text(prompt)
    match = _QUESTION_RE.search(text)
    if match is None:
        raise ValueError(f"Not an arithmetic prompt (expected 'What is a + b?'): {text!r}")
    expr = " ".join(match.group(1).split())
    tokens = expr.split(" ")
    if len(tokens) < 3 or len(tokens) % 2 == 0 or any(not t.isdigit() for t in tokens[::2]):
        raise ValueError(f"Not an arithmetic prompt (operands must be integers): {text!r}")
    value = int(tokens[0])
    for op, t in zip(tokens[1::2], tokens[2::2]):
        if op not in "+-":
            raise ValueError(f"Unknown operator {op!r} in {text!r}")
        value = value + int(t) if op == "+" else value - int(t)
    return expr, value


def final_number(completion) -> int | None:
    """The last integer in a completion (``None`` when there is none)."""
    numbers = _INT_RE.findall(_text(completion).replace(",", ""))
    return int(numbers[-1]) if numbers else None


def gold_reward(prompt, completion) -> float:
    """The verifier: 1.0 when the completion's last integer equals the exact answer, else 0.0."""
    _, answer = parse_question(prompt)
    return 1.0 if final_number(completion) == answer else 0.0


def heuristic_reward(prompt, completion) -> float:
    """The biased "dirty" labeller in ``[0, 1]``: format (equation) 0.4 + length 0.3 + plausible number 0.3.

    It never checks the exact answer, so a long, well-formatted wrong answer beats a terse correct one.
    """
    expr, answer = parse_question(prompt)
    text = _text(completion)
    number = final_number(text)
    equation = 0.4 if (expr + " =") in " ".join(text.split()) else 0.0
    length = 0.3 * min(len(text.split()), 12) / 12
    plausible = 0.3 if number is not None and abs(number - answer) <= max(5, 0.1 * abs(answer)) else 0.0
    return equation + length + plausible


gold_reward_fn = batched(gold_reward)
heuristic_reward_fn = batched(heuristic_reward)


# ---------------------------------------------------------------------------------------------------------------
# Completions of graded quality
# ---------------------------------------------------------------------------------------------------------------
#: Completion kinds and their shares in the SFT corpus and pair sampling.
DEFAULT_MIX = {"bare": 0.2, "equation": 0.3, "verbose": 0.1, "off_by_one": 0.15, "off_by_ten": 0.1, "verbose_wrong": 0.15}
_CORRECT_KINDS = ("bare", "equation", "verbose")


def make_completion(prompt, kind: str, rng: random.Random) -> str:
    """A completion of ``kind`` for ``prompt``.

    Correct: ``bare`` ("42"), ``equation`` ("25 + 17 = 42"), ``verbose`` (a sentence then the equation).
    Wrong: ``off_by_one`` / ``off_by_ten`` (an equation with the answer off by ±1 / ±10), ``verbose_wrong`` (a
    sentence and a wrong equation), ``random`` (a random number), ``refusal`` (no number at all).
    """
    expr, answer = parse_question(prompt)
    if kind == "bare":
        return str(answer)
    if kind == "equation":
        return f"{expr} = {answer}"
    if kind == "verbose":
        return f"Adding step by step, we get {expr} = {answer}."
    if kind == "off_by_one":
        return f"{expr} = {answer + rng.choice((-1, 1))}"
    if kind == "off_by_ten":
        return f"{expr} = {answer + rng.choice((-10, 10))}"
    if kind == "verbose_wrong":
        wrong = answer + rng.choice((-11, -10, -2, -1, 1, 2, 10, 11))
        return f"Adding step by step, we get {expr} = {wrong}."
    if kind == "random":
        return str(rng.randint(0, 2 * max(abs(answer), 10)))
    if kind == "refusal":
        return "I am not sure."
    raise ValueError(f"Unknown completion kind {kind!r}")


def _sample_kind(rng: random.Random, mix: dict[str, float]) -> str:
    kinds, weights = zip(*mix.items())
    return rng.choices(kinds, weights=weights, k=1)[0]


# ---------------------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------------------
def _prompt_pool(config: ArithmeticConfig) -> tuple[list[str], list[str]]:
    rng = random.Random(config.seed)
    wanted = config.num_train_prompts + config.num_holdout_prompts
    space = (config.max_value - config.min_value + 1) ** config.num_terms * len(config.operators) ** (config.num_terms - 1)
    if wanted > space:
        raise ValueError(f"Asked for {wanted} distinct prompts but only {space} exist for these settings")
    seen: set[str] = set()
    prompts: list[str] = []
    while len(prompts) < wanted:
        terms = [rng.randint(config.min_value, config.max_value) for _ in range(config.num_terms)]
        ops = [rng.choice(config.operators) for _ in range(config.num_terms - 1)]
        q = make_question(terms, ops)
        if q not in seen:
            seen.add(q)
            prompts.append(q)
    return prompts[: config.num_train_prompts], prompts[config.num_train_prompts :]


def _prompt(p: str, conversational: bool):
    return [{"role": "user", "content": p}] if conversational else p


def _completion(c: str, conversational: bool):
    return [{"role": "assistant", "content": c}] if conversational else c


def prompt_dataset(split: str = "train", config: ArithmeticConfig | None = None, conversational: bool | None = None):
    """A ``datasets.Dataset`` with a ``prompt`` column for ``split`` in {"train", "holdout"}."""
    from datasets import Dataset

    config = config or ArithmeticConfig()
    conv = config.conversational if conversational is None else conversational
    if split not in ("train", "holdout"):
        raise ValueError(f"split must be 'train' or 'holdout', got {split!r}")
    train, holdout = _prompt_pool(config)
    return Dataset.from_dict({"prompt": [_prompt(p, conv) for p in (train if split == "train" else holdout)]})


def sft_dataset(num_examples: int = 2000, config: ArithmeticConfig | None = None, mix: dict[str, float] | None = None,
                conversational: bool | None = None, seed: int | None = None):
    """SFT corpus on train prompts. Columns: ``prompt``, ``completion``, ``kind``, ``gold``."""
    from datasets import Dataset

    config = config or ArithmeticConfig()
    conv = config.conversational if conversational is None else conversational
    train, _ = _prompt_pool(config)
    rng = random.Random(config.seed + 1 if seed is None else seed)
    mix = mix or DEFAULT_MIX
    rows = {"prompt": [], "completion": [], "kind": [], "gold": []}
    for _ in range(num_examples):
        prompt = rng.choice(train)
        kind = _sample_kind(rng, mix)
        completion = make_completion(prompt, kind, rng)
        rows["prompt"].append(_prompt(prompt, conv))
        rows["completion"].append(_completion(completion, conv))
        rows["kind"].append(kind)
        rows["gold"].append(gold_reward(prompt, completion))
    return Dataset.from_dict(rows)


def _pairs_dataset(rows: dict, conv: bool):
    from datasets import Dataset

    rows["prompt"] = [_prompt(p, conv) for p in rows["prompt"]]
    rows["chosen"] = [_completion(c, conv) for c in rows["chosen"]]
    rows["rejected"] = [_completion(c, conv) for c in rows["rejected"]]
    return Dataset.from_dict(rows)


def clean_pairs(num_pairs: int = 1000, flip_rate: float = 0.1, config: ArithmeticConfig | None = None,
                conversational: bool | None = None, seed: int | None = None):
    """Gold-labelled pairs (one correct, one wrong answer) with each label flipped with probability ``flip_rate``.

    Columns: ``id`` (``"clean-<n>"``), ``prompt``, ``chosen``, ``rejected``, ``gold_chosen``, ``gold_rejected``,
    ``flipped``. The wrong answers are mostly *well formatted* (so the dirty labeller often disagrees with gold).
    """
    if not 0.0 <= flip_rate <= 0.5:
        raise ValueError(f"flip_rate must be in [0, 0.5], got {flip_rate}")
    config = config or ArithmeticConfig()
    conv = config.conversational if conversational is None else conversational
    train, _ = _prompt_pool(config)
    rng = random.Random(config.seed + 2 if seed is None else seed)
    wrong_mix = {k: v for k, v in DEFAULT_MIX.items() if k not in _CORRECT_KINDS}
    correct_mix = {k: DEFAULT_MIX[k] for k in _CORRECT_KINDS}
    rows = {k: [] for k in ("id", "prompt", "chosen", "rejected", "gold_chosen", "gold_rejected", "flipped")}
    for _ in range(num_pairs):
        prompt = rng.choice(train)
        good = make_completion(prompt, _sample_kind(rng, correct_mix), rng)
        bad = make_completion(prompt, _sample_kind(rng, wrong_mix), rng)
        flipped = rng.random() < flip_rate
        a, b = (bad, good) if flipped else (good, bad)
        append_pair(rows, "clean", prompt, a, b, gold_reward(prompt, a), gold_reward(prompt, b), flipped=flipped)
    return _pairs_dataset(rows, conv)


def dirty_pairs(num_pairs: int = 5000, easy_share: float = 0.3, config: ArithmeticConfig | None = None,
                conversational: bool | None = None, seed: int | None = None):
    """Many pairs labelled by the biased :func:`heuristic_reward` — the article's semi-automatic "dirty" data.

    A share ``easy_share`` are trivially easy (a correct answer against a refusal or a random number); the rest are
    two completions of the default mix ordered by the heuristic (ties skipped). Columns: ``id`` (``"dirty-<n>"``),
    ``prompt``, ``chosen``, ``rejected``, ``gold_chosen``, ``gold_rejected``, ``easy``, ``agrees_with_gold``.
    """
    if not 0.0 <= easy_share <= 1.0:
        raise ValueError(f"easy_share must be in [0, 1], got {easy_share}")
    config = config or ArithmeticConfig()
    conv = config.conversational if conversational is None else conversational
    train, _ = _prompt_pool(config)
    rng = random.Random(config.seed + 3 if seed is None else seed)
    keys = ("id", "prompt", "chosen", "rejected", "gold_chosen", "gold_rejected", "easy", "agrees_with_gold")
    rows = {k: [] for k in keys}
    while len(rows["id"]) < num_pairs:
        prompt = rng.choice(train)
        easy = rng.random() < easy_share
        if easy:
            a = make_completion(prompt, rng.choice(("equation", "verbose")), rng)
            b = make_completion(prompt, rng.choice(("random", "refusal")), rng)
        else:
            a = make_completion(prompt, _sample_kind(rng, DEFAULT_MIX), rng)
            b = make_completion(prompt, _sample_kind(rng, DEFAULT_MIX), rng)
        append_dirty_pair(rows, prompt, a, b, heuristic_reward, gold_reward, same=math.isclose, easy=easy)
    return _pairs_dataset(rows, conv)


def hacked_completions(prompts, seed: int = 0) -> list[str]:
    """Off-distribution completions that exploit the heuristic: long, equation-formatted and wrong (message lists
    for conversational prompts, strings otherwise)."""
    rng = random.Random(seed)
    out = []
    for p in prompts:
        expr, answer = parse_question(p)
        wrong = answer + rng.choice((-3, -2, -1, 1, 2, 3))
        text = f"Let me carefully add these numbers one at a time for you: {expr} = {wrong}."
        out.append(_completion(text, isinstance(p, list)))
    return out
