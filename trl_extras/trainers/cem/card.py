"""The model card of a CEM run: TRL's card (``trl.trainer.utils.generate_model_card``) plus the method's citations
and a per-round summary (sample reward, elite reward, entropy; gold and eval rewards when tracked)."""

from __future__ import annotations

import math

CEM_TAGS = ("trl", "trl-extras", "cem")
CEM_PAPER = {
    "title": "The Cross-Entropy Method for Combinatorial and Continuous Optimization",
    "citation": (
        "@article{rubinstein1999cross,\n"
        "    title        = {{The Cross-Entropy Method for Combinatorial and Continuous Optimization}},\n"
        "    author       = {Reuven Rubinstein},\n"
        "    journal      = {Methodology and Computing in Applied Probability},\n"
        "    volume       = 1,\n"
        "    number       = 2,\n"
        "    pages        = {127--190},\n"
        "    year         = 1999\n"
        "}"
    ),
}
SEED_CITATION = (
    "@misc{temirchev2024preparing,\n"
    "    title        = {{Preparing RL for Alignment in Large Language Models: Experience of the YandexGPT Team}},\n"
    "    author       = {Pavel Temirchev},\n"
    "    year         = 2024,\n"
    "    note         = {Medium, July 30, 2024}\n"
    "}"
)
# (column header, history key) of the rounds table; a column is shown when some round has the key
SUMMARY_COLUMNS = (
    ("round", "round"),
    ("samples", "num_samples"),
    ("mean reward", "reward_mean"),
    ("elite reward", "elite_reward_mean"),
    ("elites", "elite_count"),
    ("entropy", "entropy"),
    ("distinct-2", "distinct_2"),
    ("gold", "gold_mean"),
    ("elite gold", "elite_gold_mean"),
    ("eval reward", "eval_reward_mean"),
    ("eval gold", "eval_gold_mean"),
)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def rounds_summary_markdown(history: list[dict], initial_eval: dict | None = None, stopped: str | None = None) -> str:
    """A Markdown table with one row per round of ``history`` (``CEMTrainer.history``), the columns of
    :data:`SUMMARY_COLUMNS` that any round has; the evaluation before the first round and a stop reason follow."""
    columns = [(name, key) for name, key in SUMMARY_COLUMNS if any(key in h for h in history)]
    if not columns:
        return "No round has finished."
    lines = ["| " + " | ".join(name for name, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(h.get(key)) for _, key in columns) + " |" for h in history]
    if initial_eval:
        before = ", ".join(f"{k} {_cell(initial_eval[k])}" for k in ("eval_reward_mean", "eval_gold_mean", "eval_entropy")
                           if k in initial_eval)
        lines.append(f"\nBefore the first round: {before}.")
    if stopped:
        lines.append(f"\nStopped early: {stopped}.")
    return "\n".join(lines)


def cem_model_card(*, base_model: str | None, model_name: str, hub_model_id: str, dataset_name: str | None,
                   tags: list[str], history: list[dict], initial_eval: dict | None = None,
                   stopped: str | None = None, config_summary: dict | None = None):
    """A ``huggingface_hub.ModelCard``: TRL's template (tags include :data:`CEM_TAGS`, Rubinstein's CEM citation)
    followed by a "CEM rounds" section (settings and :func:`rounds_summary_markdown`) and the article's citation."""
    from trl.trainer.utils import generate_model_card

    card = generate_model_card(
        base_model=base_model, model_name=model_name, hub_model_id=hub_model_id, dataset_name=dataset_name,
        tags=sorted(set(tags) | set(CEM_TAGS)), wandb_url=None, trackio_url=None, trainer_name="CEM",
        trainer_citation=CEM_PAPER["citation"], paper_title=CEM_PAPER["title"],
    )
    section = ["## CEM rounds", "",
               "Trained with `trl_extras.CEMTrainer` (the cross-entropy method, the YandexGPT article's \"poor man's "
               "RL\"): each round samples N answers per prompt, keeps the best by reward (the elites) and fine-tunes "
               "on them with TRL's `SFTTrainer`.", ""]
    if config_summary:
        section.append("Settings: " + ", ".join(f"`{k}={v}`" for k, v in config_summary.items()) + ".")
        section.append("")
    section += [rounds_summary_markdown(history, initial_eval, stopped), "", "Cite the article as:", "",
                "```bibtex", SEED_CITATION, "```", ""]
    card.text = card.text.rstrip() + "\n\n" + "\n".join(section)
    return card
