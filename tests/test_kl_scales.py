"""KL is logged under several names at two scales (issue: PPO's `kl/exact` is a per-sequence sum like old TRL
PPOTrainer's `objective/kl`; GRPO's `exact_kl`, CEM's `kl_to_ref` and TRL GRPO's `kl` are per-token means). Keys are
not renamed (users' dashboards); the registry, hence README's "Logged metrics", states each one's scale."""

from trl_extras.utils.metric_names import METRICS, lookup, reference_markdown

SUM = "sum over the completion's tokens, mean over sequences"
TOKEN_MEAN = "mean over tokens"
KL_KEYS = {
    "kl/exact": SUM, "kl/{estimator}": SUM, "measure/kl": SUM, "kl/exact_per_token": TOKEN_MEAN,
    "exact_kl": TOKEN_MEAN, "kl": TOKEN_MEAN, "cem/kl_to_ref": TOKEN_MEAN, "kl_to_ref": TOKEN_MEAN,
    "loss/kl": TOKEN_MEAN, "policy/approx_kl": TOKEN_MEAN,
}  # fmt: skip


def test_every_kl_entry_states_its_scale():
    kl_entries = {m.key: m for m in METRICS if "kl" in m.key.lower() and m.key not in ("kl/coef", "kl/budget_stop")}
    assert set(kl_entries) == set(KL_KEYS), "a new KL key: say its scale here and in its registry entry"
    for key, scale in KL_KEYS.items():
        other = TOKEN_MEAN if scale == SUM else SUM
        text = kl_entries[key].measures
        assert scale in text and other not in text.replace(f"{scale}", ""), (key, text)
        assert scale in reference_markdown()


def test_ppo_has_a_per_token_key_on_grpos_axis():
    assert lookup("kl/exact_per_token").key == "kl/exact_per_token"
    assert TOKEN_MEAN in lookup("kl/exact_per_token").measures and TOKEN_MEAN in lookup("exact_kl").measures
    assert lookup("eval_kl/exact_per_token") is not None  # evaluate() logs it too
