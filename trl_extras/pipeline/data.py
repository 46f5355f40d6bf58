"""Dataset specs of the pipeline: ``"testbed"`` or ``"name_or_path[:split]"`` for ``datasets``."""

from __future__ import annotations

from .config import PipelineConfig


def load_spec(spec: str):
    """Load ``"name_or_path[:split]"`` (hub id, ``save_to_disk`` directory or a JSON/JSONL/Parquet/CSV file)."""
    from ..utils.data import load_dataset_from_spec

    name, _, split = spec.partition(":")
    return load_dataset_from_spec(name, split=split or "train")


def pipeline_datasets(config: PipelineConfig) -> dict:
    """Every dataset the pipeline needs, keyed by role; testbed specs are generated (seeded)."""
    from ..testbed import task_module

    tb = task_module(config.task)
    task = tb.TaskConfig(seed=config.seed)
    prompt_dataset, sft_dataset, clean_pairs, dirty_pairs = tb.prompt_dataset, tb.sft_dataset, tb.clean_pairs, tb.dirty_pairs
    out = {}

    def testbed(role):
        if role == "prompts":
            return prompt_dataset("train", task).select(range(config.num_train_prompts))
        if role == "eval_prompts":
            return prompt_dataset("holdout", task).select(range(config.num_eval_prompts))
        if role == "sft":
            # the curated SFT data: the corpus restricted to good answers (gold >= 0.75); on a task whose
            # demonstrators have a systematic wrong mode, to the answers they meant to be right (the mode included:
            # curators cannot see it, which is why the SFT model inherits it)
            data = sft_dataset(4 * config.num_sft_examples, task, seed=config.seed + 101)
            if getattr(task, "mode_share", 0.0) > 0:
                data = data.filter(lambda row: row["kind"] in ("correct", "mode"))
            else:
                data = data.filter(lambda row: row["gold"] >= 0.75)
            return data.select(range(min(config.num_sft_examples, len(data))))
        if role == "dirty":
            return dirty_pairs(config.num_dirty_pairs, config=task, seed=config.seed + 102)
        if role == "clean":
            return clean_pairs(config.num_clean_pairs, flip_rate=0.1, config=task, seed=config.seed + 103)
        if role == "real_pairs":
            return clean_pairs(config.num_clean_pairs, flip_rate=0.1, config=task, seed=config.seed + 104)
        if role == "rm_test":  # held-out pairs labelled by gold without noise: RM accuracy against truth
            return clean_pairs(config.num_rm_test_pairs, flip_rate=0.0, config=task, seed=config.seed + 105)
        raise KeyError(role)

    specs = {
        "prompts": config.prompt_dataset,
        "eval_prompts": config.eval_prompt_dataset,
        "sft": config.sft_dataset,
        "dirty": config.dirty_pairs_dataset,
        "clean": config.clean_pairs_dataset,
        "real_pairs": config.real_pairs_dataset,
        "rm_test": config.clean_pairs_dataset,
    }
    from .config import AUTO

    for role, spec in specs.items():
        if spec == AUTO:
            config.check_datasets()  # the user's data with this one unset: an error naming every unset field
        if spec is None:
            out[role] = None
        elif spec == "testbed":
            out[role] = testbed(role)
        else:
            data = load_spec(spec)
            if role in ("clean", "rm_test"):  # outside the testbed, the last 10% of the clean pairs are held out
                n = len(data)
                data = data.select(range(int(0.9 * n), n) if role == "rm_test" else range(int(0.9 * n)))
            out[role] = data
        if role in ("prompts", "eval_prompts") and out[role] is not None and "prompt" not in out[role].column_names:
            raise ValueError(f"The {role} dataset has no 'prompt' column (columns: {out[role].column_names}).")
    return out
