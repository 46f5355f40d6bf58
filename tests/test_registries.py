"""Registries of named variants (core/registry.py): a new KL penalty, loss aggregation, advantage normalization,
ensemble penalty or CEM elite rule is one decorated function in core/, accepted by the configs and run by the
trainers without a trainer edit."""

import pytest
import torch

from trl_extras.core.advantages import ADVANTAGE_NORMALIZERS, normalize_advantages
from trl_extras.core.ensemble import ENSEMBLE_PENALTIES, penalize
from trl_extras.core.kl import KL_PENALTIES, kl_from_logprobs
from trl_extras.core.ppo import GRPO_LOSS_AGGREGATION, LOSS_AGGREGATIONS, aggregate_loss
from trl_extras.core.registry import Registry
from trl_extras.core.selection import ELITE_RULES, select_elites


@pytest.fixture
def toy():
    """Registers toy entries and removes them afterwards (registries are module-level)."""
    added = []

    def register(registry, name, fn, **attributes):
        registry.register(name, **attributes)(fn)
        added.append((registry, name))
        return fn

    yield register
    for registry, name in added:
        registry.unregister(name)


def test_registry_basics():
    reg = Registry("thing", required=("cheap",))
    with pytest.raises(ValueError, match="must declare cheap"):
        reg.register("a")
    reg.register("a", cheap=True)(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", cheap=True)(lambda: 2)
    assert "a" in reg and "b" not in reg and 3 not in reg and tuple(reg) == ("a",) and len(reg) == 1
    assert reg.get("a").cheap is True and reg.get("a")() == 1
    assert reg.names(cheap=True) == ("a",) and reg.names(cheap=False) == ()
    with pytest.raises(ValueError, match=r"Unknown thing 'b'; expected one of \('a',\)"):
        reg.get("b")
    with pytest.raises(ValueError, match="field must be one of"):
        reg.check("b", "field")


def test_declared_attributes_of_the_builtin_entries():
    assert KL_PENALTIES.names(needs_full_vocabulary=True) == ("exact",)
    assert KL_PENALTIES.names(direct_gradient=True) == ("exact",)
    assert set(ENSEMBLE_PENALTIES.names(needs_calibration=True)) == {"variance", "std"}
    assert set(GRPO_LOSS_AGGREGATION.values()) <= set(LOSS_AGGREGATIONS)
    assert {"batch", "group", "none"} <= set(ADVANTAGE_NORMALIZERS)
    assert {"top_k", "quantile", "threshold"} <= set(ELITE_RULES)


def _grpo_1_16_aggregation(per_token, mask, loss_type, ga, num_items, num_processes, spg, max_len, mode):
    """TRL 1.16 GRPOTrainer's aggregation of ``per_token_loss``, as ExactKLGRPOTrainer hard-coded it before the
    registry (the specification the shared registry must reproduce)."""
    ga = ga if mode == "train" else 1.0
    if loss_type in ("grpo", "sapo"):
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / ga
    if loss_type == "bnpo":
        return (per_token * mask).sum() / mask.sum().clamp(min=1.0) / ga
    if loss_type == "dr_grpo":
        return (per_token * mask).sum() / (per_token.size(0) * max_len) / ga
    if loss_type == "luspo":
        return (per_token * mask).sum(-1).mean() / ga
    normalizer = num_items.clamp(min=1.0) / num_processes
    if mode == "train":
        normalizer = normalizer * ga / spg
    return (per_token * mask).sum() / normalizer


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("loss_type", sorted(GRPO_LOSS_AGGREGATION))
def test_one_aggregation_registry_reproduces_grpo_for_every_loss_type(loss_type, mode):
    torch.manual_seed(0)
    per_token, mask = torch.randn(5, 7), (torch.rand(5, 7) > 0.3).float()
    ga, spg, procs, max_len = 3, 6, 2, 9
    num_items = torch.tensor(57.0)  # tokens of the generation batch (steps_per_generation micro-batches)
    expected = _grpo_1_16_aggregation(per_token, mask, loss_type, ga, num_items, procs, spg, max_len, mode)
    tokens = num_items * ga / spg if mode == "train" else num_items  # what ExactKLGRPOTrainer passes
    got = aggregate_loss(
        per_token, mask, GRPO_LOSS_AGGREGATION[loss_type], gradient_accumulation_steps=ga if mode == "train" else 1,
        num_items_in_batch=tokens, num_processes=procs, max_completion_length=max_len,
    )
    torch.testing.assert_close(got, expected)


def test_a_registered_sampled_kl_estimator_is_used_by_kl_from_logprobs(toy):
    toy(KL_PENALTIES, "k1_abs", lambda lp, ref, exact_kl=None: (lp - ref).abs(),
        needs_full_vocabulary=False, direct_gradient=False)  # fmt: skip
    lp, ref = torch.tensor([[0.0, -1.0]]), torch.tensor([[-1.0, 0.0]])
    torch.testing.assert_close(kl_from_logprobs(lp, ref, "k1_abs"), torch.tensor([[1.0, 1.0]]))
    with pytest.raises(ValueError, match="needs full logits"):
        kl_from_logprobs(lp, ref, "exact")


def test_a_registered_ensemble_penalty_declares_calibration(toy):
    from trl_extras.rewards.ensemble import RewardEnsemble  # noqa: F401  (the consumer reads the declaration)

    toy(ENSEMBLE_PENALTIES, "median", lambda stats, members, coef: members.median(dim=0).values,
        needs_members=True, needs_calibration=False)  # fmt: skip
    members = torch.tensor([[1.0, 5.0], [2.0, 0.0], [3.0, 1.0]])
    torch.testing.assert_close(penalize(members, "median"), torch.tensor([2.0, 1.0]))
    from trl_extras.core.ensemble import ensemble_stats

    with pytest.raises(ValueError, match="needs the \\(K, N\\) member scores"):
        penalize(ensemble_stats(members), "median")


def test_a_registered_elite_rule_combines_with_the_builtin_ones(toy):
    toy(ELITE_RULES, "positive", lambda rewards, group_index, value, candidates: candidates & (rewards > value))
    rewards = torch.tensor([3.0, -1.0, 2.0, 0.5])
    groups = torch.tensor([0, 0, 1, 1])
    mask = select_elites(rewards, groups, top_k=1, extra_rules={"positive": 1.0})
    assert mask.tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match="Unknown CEM elite rule 'nope'"):
        select_elites(rewards, groups, extra_rules={"nope": 1})


def test_a_registered_advantage_normalization_runs_through_ppo(toy, tiny_paths, tmp_path):
    """A toy normalization registered in core is accepted by PPOConfig and used by PPOTrainer's update."""
    from test_ppo import _trainer

    calls = []

    def sign_only(advantages, valid, *, keep_mean, group_index, accelerator, eps):
        calls.append(tuple(advantages.shape))
        return torch.where(valid, advantages.sign(), torch.zeros((), dtype=advantages.dtype))

    toy(ADVANTAGE_NORMALIZERS, "sign", sign_only)
    adv = torch.tensor([[2.0, -3.0], [0.5, 7.0]])
    assert normalize_advantages(adv, mode="sign").tolist() == [[1.0, -1.0], [1.0, 1.0]]
    calls.clear()
    trainer = _trainer(tiny_paths, tmp_path, advantage_normalization="sign", max_steps=1, num_ppo_epochs=1,
                       num_mini_batches=1)  # fmt: skip
    trainer.train()
    assert calls, "PPOTrainer did not call the registered normalization"


def test_a_registered_loss_aggregation_runs_through_ppo(toy, tiny_paths, tmp_path):
    from test_ppo import _trainer

    calls = []

    def token_sum(summed, valid, ctx):
        calls.append(ctx.gradient_accumulation_steps)
        return summed.sum() / ctx.gradient_accumulation_steps

    toy(LOSS_AGGREGATIONS, "token_sum", token_sum)
    trainer = _trainer(tiny_paths, tmp_path, loss_type="token_sum", max_steps=1, num_ppo_epochs=1, num_mini_batches=1)
    trainer.train()
    assert calls and all(ga == 1 for ga in calls)


def test_configs_refuse_unregistered_names(tmp_path):
    from helpers import cpu_config

    from trl_extras.trainers.ppo import PPOConfig

    for field, value in [("kl_estimator", "k4"), ("loss_type", "nope"), ("advantage_normalization", "rank")]:
        with pytest.raises(ValueError, match=field):
            cpu_config(PPOConfig, tmp_path / "out", **{field: value})


@pytest.mark.parametrize(
    ("name", "full_vocabulary", "direct"),
    [("k3_in_loss", False, True), ("exact_in_reward_only", True, False)],
)
def test_a_registered_kl_penalty_runs_through_ppo_by_its_declared_axes(toy, tiny_paths, tmp_path, name,
                                                                       full_vocabulary, direct):  # fmt: skip
    """The two axes are read, not the name: a sampled k3 with a direct loss term (GRPO's choice) gets `loss/kl`
    and its own `kl/<name>` curve; the exact KL in the reward only (no direct term) gets neither."""
    from test_ppo import _history, _trainer

    from trl_extras.core.kl import kl_exact, kl_k3

    seen = []

    def penalty(logprobs, ref_logprobs, exact_kl=None):
        seen.append(torch.is_grad_enabled() and logprobs.requires_grad)
        return kl_exact(logprobs, ref_logprobs, exact_kl) if full_vocabulary else kl_k3(logprobs, ref_logprobs)

    toy(KL_PENALTIES, name, penalty, needs_full_vocabulary=full_vocabulary, direct_gradient=direct)
    trainer = _trainer(tiny_paths, tmp_path, kl_estimator=name, max_steps=2, num_ppo_epochs=1, num_mini_batches=1,
                       kl_coef=0.1)  # fmt: skip
    trainer.train()
    assert seen[0] is False  # the rollout's penalty, without gradient
    assert any(seen[1:]) is direct  # the update's direct term, with gradient w.r.t. the policy
    assert bool(_history(trainer, "loss/kl")) is direct
    assert bool(_history(trainer, f"kl/{name}")) is (not full_vocabulary)
    assert _history(trainer, "kl/exact")  # the exact KL is always measured
