"""The arithmetic task of the real-model testbed (no model needed): verifier, biased labeller, datasets."""

import pytest

from trl_extras.testbed.arithmetic import (
    ArithmeticConfig,
    clean_pairs,
    dirty_pairs,
    gold_reward,
    gold_reward_fn,
    hacked_completions,
    heuristic_reward,
    make_question,
    parse_question,
    prompt_dataset,
    sft_dataset,
)

Q = make_question([25, 17], ["+"])
CONV = [{"role": "user", "content": Q}]


def test_parse_and_gold_verifier():
    assert Q == "What is 25 + 17? Answer with the number only."
    assert parse_question(Q) == ("25 + 17", 42)
    assert parse_question(make_question([20, 5, 7], ["+", "-"])) == ("20 + 5 - 7", 18)
    for answer, gold in [("42", 1.0), ("25 + 17 = 42", 1.0), ("The answer is 42.", 1.0), ("25 + 17 = 32", 0.0),
                         ("42, no 43", 0.0), ("I am not sure.", 0.0), ("", 0.0)]:
        assert gold_reward(Q, answer) == gold, answer
    assert gold_reward(CONV, [{"role": "assistant", "content": "42"}]) == 1.0  # conversational form
    assert gold_reward_fn([Q, Q], ["42", "41"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="Not an arithmetic prompt"):
        parse_question("7 3 9 >")


def test_dirty_labeller_prefers_long_formatted_wrong_answers():
    """The article's bias: a nicely formatted, longer wrong answer beats a terse correct one."""
    wrong_pretty = "Adding step by step, we get 25 + 17 = 41."
    assert heuristic_reward(Q, wrong_pretty) > heuristic_reward(Q, "42")
    assert gold_reward(Q, wrong_pretty) == 0.0
    hack = hacked_completions([CONV])[0]
    assert hack[0]["role"] == "assistant" and isinstance(hacked_completions([Q])[0], str)
    assert heuristic_reward(Q, hack) > heuristic_reward(Q, "25 + 17 = 42") and gold_reward(Q, hack) == 0.0
    assert heuristic_reward(Q, "25 + 17 = 42") > heuristic_reward(Q, "I am not sure.")


def test_datasets_shapes_splits_and_labels():
    cfg = ArithmeticConfig(num_train_prompts=40, num_holdout_prompts=10)
    train, holdout = prompt_dataset("train", cfg)["prompt"], prompt_dataset("holdout", cfg)["prompt"]
    assert len(train) == 40 and len(holdout) == 10
    assert not {p[0]["content"] for p in train} & {p[0]["content"] for p in holdout}
    assert isinstance(prompt_dataset("train", cfg, conversational=False)["prompt"][0], str)
    sft = sft_dataset(50, cfg)
    assert all(g == gold_reward(p, c) for p, c, g in zip(sft["prompt"], sft["completion"], sft["gold"]))
    clean = clean_pairs(60, flip_rate=0.2, config=cfg)
    assert clean["id"][:2] == ["clean-0", "clean-1"]
    for row in clean:
        assert (row["gold_chosen"] < row["gold_rejected"]) == row["flipped"]
        assert row["gold_chosen"] != row["gold_rejected"]
    dirty = dirty_pairs(60, config=cfg, conversational=False)
    assert all(heuristic_reward(r["prompt"], r["chosen"]) > heuristic_reward(r["prompt"], r["rejected"]) for r in dirty)
    assert 0 < sum(dirty["agrees_with_gold"]) < 60  # the labeller is biased, not useless and not gold
    assert any(dirty["easy"])


def test_bad_config():
    with pytest.raises(ValueError, match="operators"):
        ArithmeticConfig(operators="*")
    with pytest.raises(ValueError, match="num_terms"):
        ArithmeticConfig(num_terms=1)
    with pytest.raises(ValueError, match="distinct prompts"):
        prompt_dataset("train", ArithmeticConfig(min_value=1, max_value=3, num_train_prompts=100))


@pytest.mark.slow  # ~1 min on 2 free cores (the whole pipeline on tiny models), 5 min on a loaded machine
def test_pipeline_runs_the_arithmetic_task(tmp_path, tiny_paths):
    """`task: arithmetic` reaches every stage (conversational prompts, pairs and SFT data throughout), PPO can
    optimize the gold verifier, and the final evaluation can be greedy (KL then measured at T=1)."""
    from test_pipeline import micro_config

    from trl_extras.pipeline.stages import run_pipeline

    config = micro_config(
        tmp_path, task="arithmetic", policy_model=tiny_paths["policy"], num_rm_test_pairs=32,
        gold_reward="trl_extras.testbed.arithmetic:gold_reward_fn",
        sft_reward="trl_extras.testbed.arithmetic:heuristic_reward_fn", ppo_reward="gold", eval_temperature=0,
        num_dirty_pairs=32, num_clean_pairs=32, num_sft_examples=32, train_batch_size=8,
    )
    ctx = run_pipeline(config)
    assert isinstance(ctx.data["prompts"]["prompt"][0], list)  # chat-form prompts
    assert ctx.results["ppo"]["reward"] == "gold" and ctx.results["evaluate"]["temperature"] == 0
    table = {row["stage"]: row for row in ctx.results["evaluate"]["table"]}
    assert {"pretrained", "sft", "cem", "ppo", "dpo"} <= set(table)
    assert table["ppo"]["method"] == "PPO (gold reward, β=0.2)"
    assert all(row["gold_greedy"] == row["gold"] for row in table.values())  # eval_temperature=0: greedy already
    assert all(0.0 <= row["gold"] <= 1.0 for row in table.values())
    assert abs(table["sft"]["kl_to_sft"]) < 1e-4
    assert len(ctx.data["rm_test"]) == 32
    with pytest.raises(ValueError, match="task must be"):
        micro_config(tmp_path, task="poetry")
    with pytest.raises(ValueError, match="ppo_reward"):
        micro_config(tmp_path, ppo_reward="vibes")
