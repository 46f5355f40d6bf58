"""side_by_side: counting, binomial test, judge order handling, generation from models, bad input."""

import pytest

from trl_extras.evaluation.side_by_side import (
    SideBySideResult,
    combine_both_orders,
    reward_verdict,
    side_by_side,
)
from trl_extras.testbed import gold_reward_fn, prompt_dataset
from trl_extras.testbed.task import format_completion, parse_prompt


def _prompts(n=60):
    return prompt_dataset("holdout")["prompt"][:n]


def _sorted(prompts):
    return [format_completion(sorted(parse_prompt(p))) for p in prompts]


def _reversed(prompts):
    return [format_completion(sorted(parse_prompt(p), reverse=True)) for p in prompts]


def test_identical_completions_are_all_ties():
    prompts = _prompts(30)
    answers = _sorted(prompts)
    result = side_by_side(answers, list(answers), prompts, gold_reward_fn)
    assert (result.wins, result.losses, result.ties, result.n) == (0, 0, 30, 30)
    assert result.p_value == 1.0
    assert result.win_rate == 0.5 and result.win_rate_ci == (0.0, 1.0)
    assert result.judge_kind == "reward"


def test_clearly_better_completions_are_significant():
    prompts = [p for p in _prompts(80) if len(set(parse_prompt(p))) > 1][:40]
    result = side_by_side(_sorted(prompts), _reversed(prompts), prompts, gold_reward_fn)
    assert result.wins == 40 and result.losses == 0
    assert result.p_value < 0.01
    assert result.win_rate_ci[0] > 0.5
    # and the mirror image: B is better, same p-value
    mirror = side_by_side(_reversed(prompts), _sorted(prompts), prompts, gold_reward_fn, ci_method="clopper-pearson")
    assert mirror.losses == 40 and mirror.p_value == pytest.approx(result.p_value)
    assert mirror.win_rate_ci[1] < 0.5
    assert "40 losses" in mirror.summary()
    d = mirror.to_dict()
    assert d["records"][0]["verdict"] == "b" and d["p_value"] == mirror.p_value


def test_tie_tolerance():
    assert reward_verdict(1.0, 0.95, tie_tolerance=0.1) == "tie"
    assert reward_verdict(1.0, 0.85, tie_tolerance=0.1) == "a"
    assert reward_verdict(0.85, 1.0, tie_tolerance=0.1) == "b"
    prompts = ["1 2 >", "3 4 >"]
    result = side_by_side([" 1 2", " 3 4"], [" 1 2 9", " 3"], prompts, gold_reward_fn, tie_tolerance=0.5)
    assert result.ties == 2  # gold 1.0 vs 0.67 / 0.5: within tolerance
    result = side_by_side([" 1 2", " 3 4"], [" 1 2 9", " 3"], prompts, gold_reward_fn, tie_tolerance=0.0)
    assert result.wins == 2


def test_combine_both_orders_mt_bench_rule():
    assert combine_both_orders(0, 1) == "a"  # A first and preferred; B first, second (A) preferred
    assert combine_both_orders(1, 0) == "b"
    assert combine_both_orders(0, 0) == "tie"  # always picks the first shown: position bias, no verdict
    assert combine_both_orders(None, 1) == "tie"


def _position_biased_judge(prompt, first, second):
    return 0  # always prefers whatever is shown first


def test_position_biased_judge_both_orders_gives_ties():
    prompts = _prompts(20)
    a, b = _sorted(prompts), _reversed(prompts)
    result = side_by_side(a, b, prompts, _position_biased_judge, order="both")
    assert result.judge_kind == "pairwise"
    assert result.ties == 20 and result.inconsistent == 20 and result.p_value == 1.0
    assert "inconsistently" in result.summary()


def test_position_biased_judge_random_order_is_balanced_and_seeded():
    prompts = _prompts(200)
    a, b = _sorted(prompts), _reversed(prompts)
    r1 = side_by_side(a, b, prompts, _position_biased_judge, order="random", seed=3)
    r2 = side_by_side(a, b, prompts, _position_biased_judge, order="random", seed=3)
    assert [r.verdict for r in r1.records] == [r.verdict for r in r2.records]
    # the order is a fair coin, so a judge that only sees position gives a non-significant result
    assert 70 < r1.wins < 130 and r1.p_value > 0.001
    # every record remembers which answer was shown first
    assert all(rec.verdict == ("a" if rec.judgments[0][0] else "b") for rec in r1.records)


def test_content_judge_random_order_maps_back_to_a():
    prompts = [p for p in _prompts(80) if len(set(parse_prompt(p))) > 1][:30]

    def judge(prompt, first, second):  # a fair judge that prefers the correctly sorted answer
        sa, sb = gold_reward_fn([prompt, prompt], [first, second])
        return None if sa == sb else (0 if sa > sb else 1)

    for order in ("random", "both"):
        result = side_by_side(_sorted(prompts), _reversed(prompts), prompts, judge, order=order)
        assert result.wins == 30 and result.inconsistent == 0


def test_generation_from_models(tiny_paths):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = _prompts(6)
    tok = AutoTokenizer.from_pretrained(tiny_paths["tokenizer"])
    tok.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(tiny_paths["policy"])
    result = side_by_side(
        model, tiny_paths["policy"], prompts, gold_reward_fn, processing_class=tok, max_new_tokens=6, temperature=0
    )
    # greedy decoding from the same weights: the same answers, all ties
    assert result.ties == 6 and all(r.answer_a == r.answer_b for r in result.records)
    assert tok.padding_side == "right"
    # a reward model path as judge
    result = side_by_side(model, model, prompts, tiny_paths["reward"], processing_class=tok, max_new_tokens=6)
    assert result.n == 6 and all(isinstance(r.score_a, float) for r in result.records)


def test_bad_input(tmp_path):
    prompts = ["1 2 >", "3 4 >"]
    with pytest.raises(ValueError, match="empty"):
        side_by_side([], [], [], gold_reward_fn)
    with pytest.raises(ValueError, match="precomputed"):
        side_by_side([" 1 2"], [" 1 2", " 3 4"], prompts, gold_reward_fn)
    with pytest.raises(ValueError, match="order"):
        side_by_side([" 1", " 3"], [" 1", " 3"], prompts, _position_biased_judge, order="first")
    with pytest.raises(ValueError, match="tie_tolerance"):
        side_by_side([" 1", " 3"], [" 1", " 3"], prompts, gold_reward_fn, tie_tolerance=-1)
    with pytest.raises(ValueError, match="expected 0, 1 or None"):
        side_by_side([" 1", " 3"], [" 1", " 3"], prompts, lambda p, f, s: "first")
    with pytest.raises(ValueError, match="finite"):
        side_by_side([" 1", " 3"], [" 1", " 3"], prompts, lambda prompts, completions, **kw: [float("nan")] * len(prompts))
    from datasets import Dataset

    with pytest.raises(ValueError, match="'prompt' column"):
        side_by_side([" 1"], [" 1"], Dataset.from_dict({"text": ["1 >"]}), gold_reward_fn)
    with pytest.raises(ValueError, match="method"):
        side_by_side([" 1", " 3"], [" 1", " 3"], prompts, gold_reward_fn, ci_method="exact")


def test_result_json_roundtrip(tmp_path):
    import json

    prompts = _prompts(5)
    result = side_by_side(_sorted(prompts), _reversed(prompts), prompts, gold_reward_fn)
    assert isinstance(result, SideBySideResult)
    result.to_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["n"] == 5 and len(data["records"]) == 5


def test_cli_sbs(tiny_paths, tmp_path, capsys):
    import json

    from trl_extras.cli import main

    out = tmp_path / "sbs.json"
    argv = ["sbs", "--model_a", tiny_paths["policy"], "--model_b", tiny_paths["policy"], "--judge", "gold",
            "--num_prompts", "4", "--max_new_tokens", "4", "--temperature", "0", "--output_json", str(out)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert data["n"] == 4 and data["ties"] == 4 and data["p_value"] == 1.0  # greedy, same weights
    assert "4 ties" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--reward_funcs is required"):
        main(["sbs", "--model_a", tiny_paths["policy"], "--model_b", tiny_paths["policy"]])
