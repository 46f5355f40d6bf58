"""The sampler seam (issue 25): one protocol, backends `generate` (default), transformers continuous batching, vLLM.

- the default backend gives the token ids of a direct HF ``generate`` call with the same settings and seed;
- continuous batching samples softmax(logits / T) (chi-square / mass-outside-top-50 test of
  tests/test_sampling_distribution.py, on CPU) and runs inside PPO and CEM;
- vLLM cannot be installed here: its orchestration is tested with a RECORDING STAND-IN of the engine, a subclass of
  TRL's own ``VLLMGeneration`` whose server client is replaced by an in-process recorder (``RecordingVLLMClient``).
  TRL's real ``sync_weights`` / ``_iter_named_params`` (PEFT merge -> push -> unmerge, name fixing) and its real
  server-mode ``generate`` run; only the HTTP/NCCL client is the stand-in. The stand-in loads every pushed tensor
  into its own copy of the model (strict names) and samples from that copy with softmax(logits / T), so a missed or
  misnamed sync shows up as a failure or as a log-prob gap.
"""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from helpers import cpu_config
from test_sampling_distribution import (
    PROMPT,
    QWEN_LIKE,
    TEMPERATURE,
    _check_samples_match,
    _first_token_probs,
    _save_model,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_extras.modeling import generation
from trl_extras.modeling.generation import (
    ContinuousBatchingSampler,
    GenerateSampler,
    SamplingSpec,
    VLLMSampler,
    checkpoint_generation_config_hidden,
    generate_rollouts,
    make_sampler,
    sampling_generation_config,
)


@pytest.fixture(scope="module")
def policy(tiny_paths):
    return AutoModelForCausalLM.from_pretrained(tiny_paths["policy"]), AutoTokenizer.from_pretrained(tiny_paths["policy"])


@pytest.fixture(scope="module")
def qwen_like_path(tmp_path_factory):
    return _save_model(tmp_path_factory.mktemp("qwen_like_samplers"), QWEN_LIKE)


# ---------------------------------------------------------------------------------------------------- default backend
def test_default_backend_gives_the_token_ids_of_a_direct_generate_call(policy):
    """Same seed, same settings: generate_rollouts (through GenerateSampler) and hand-made left-padded HF generate
    calls in the same batches give the same tokens, and leave the random stream in the same state."""
    from trl.trainer.utils import pad

    model, tok = policy
    prompts = ["3 1 >", "7 2 5 >", "1 >"]
    torch.manual_seed(11)
    rollout = generate_rollouts(model, tok, prompts, max_new_tokens=6, num_generations=2, batch_size=4,
                                temperature=0.9)
    after = torch.rand(1)

    torch.manual_seed(11)
    rows = [tok(p)["input_ids"] for p in prompts for _ in range(2)]
    config = sampling_generation_config(max_new_tokens=6, temperature=0.9, pad_token_id=tok.pad_token_id,
                                        eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    expected = []
    with checkpoint_generation_config_hidden(model):
        for start in range(0, len(rows), 4):
            chunk = [torch.tensor(r) for r in rows[start : start + 4]]
            ids = pad(chunk, tok.pad_token_id, padding_side="left")
            mask = pad([torch.ones_like(x) for x in chunk], 0, padding_side="left")
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
            expected.extend(out[:, ids.size(1) :])
    assert torch.equal(torch.rand(1), after)  # the same random numbers were drawn
    for got, want, m in zip(rollout.completion_ids, expected, rollout.completion_mask):
        n = int(m.sum())
        assert got[:n].tolist() == want[:n].tolist()
    assert rollout.sampler_logprobs is None  # generate returns no engine log-probs


def test_make_sampler_picks_the_backend_from_grpo_field_names(tmp_path):
    from trl_extras import PPOConfig

    assert isinstance(make_sampler(None), GenerateSampler)
    args = cpu_config(PPOConfig, tmp_path)
    assert isinstance(make_sampler(args), GenerateSampler) and not make_sampler(args).needs_weight_sync
    args = cpu_config(PPOConfig, tmp_path, use_transformers_continuous_batching=True,
                      transformers_continuous_batching_config={"num_blocks": 32})
    sampler = make_sampler(args)
    assert isinstance(sampler, ContinuousBatchingSampler) and sampler.continuous_batching_config == {"num_blocks": 32}


def test_only_the_generation_module_generates():
    """The guard of test_sampling_distribution covers ``.generate(``; the new backends' entry points
    (``generate_batch``, TRL's ``VLLMGeneration``) are called in modeling/generation.py only as well."""
    from pathlib import Path

    import trl_extras

    root = Path(trl_extras.__file__).parent
    for needle in ("generate_batch(", "VLLMGeneration(", "vllm_generation import"):
        users = {str(p.relative_to(root)) for p in root.rglob("*.py") if needle in p.read_text()}
        assert users <= {"modeling/generation.py"}, (needle, users)


# ---------------------------------------------------------------------------------------- continuous batching backend
def test_continuous_batching_samples_softmax_over_temperature(qwen_like_path):
    """The chi-square / mass-outside-top-50 test on transformers' continuous batching (CPU), with a checkpoint whose
    generation_config truncates (top_k=20, top_p=0.8, repetition_penalty=1.05): nothing of it may act."""
    model = AutoModelForCausalLM.from_pretrained(qwen_like_path)
    tok = AutoTokenizer.from_pretrained(qwen_like_path)
    probs = _first_token_probs(model, tok, PROMPT, TEMPERATURE)
    torch.manual_seed(0)
    sampler = ContinuousBatchingSampler()
    rollout = generate_rollouts(model, tok, [PROMPT], max_new_tokens=1, temperature=TEMPERATURE,
                                num_generations=1500, sampler=sampler)
    _check_samples_match(probs, rollout.completion_ids[:, 0], "continuous batching")
    # the engine's log-probs are those of softmax(logits / T): the trainer would recompute the same
    engine = rollout.sampler_logprobs[:, 0]
    assert torch.allclose(engine, probs[rollout.completion_ids[:, 0]].log(), atol=1e-4)


def test_continuous_batching_is_reproducible_under_a_seed_and_restores_train_mode(policy):
    model, tok = policy
    model.train()
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        r = generate_rollouts(model, tok, ["3 1 >", "7 2 5 >"], max_new_tokens=5, num_generations=3,
                              sampler=ContinuousBatchingSampler())
        runs.append(r.completion_ids)
    assert torch.equal(runs[0], runs[1])
    assert model.training
    model.eval()


# ---------------------------------------------------------------------------------------------- config-time errors
@pytest.mark.parametrize("config_name", ["PPOConfig", "CEMConfig"])
def test_generation_backend_config_errors(tmp_path, config_name, monkeypatch):
    import trl_extras

    cls = getattr(trl_extras, config_name)
    with pytest.raises(ImportError, match=r"pip install trl-extras\[vllm\]"):
        cpu_config(cls, tmp_path, use_vllm=True)  # vllm is not installed here
    with pytest.raises(ValueError, match="pick one generation backend"):
        cpu_config(cls, tmp_path, use_vllm=True, use_transformers_continuous_batching=True)
    with pytest.raises(ValueError, match="vllm_mode"):
        cpu_config(cls, tmp_path, vllm_mode="remote")
    with pytest.raises(ValueError, match="vllm_importance_sampling_mode"):
        cpu_config(cls, tmp_path, vllm_importance_sampling_mode="token")
    with pytest.raises(ValueError, match="clip_min"):
        cpu_config(cls, tmp_path, vllm_importance_sampling_clip_min=2.0, vllm_importance_sampling_clip_max=1.0)
    with pytest.raises(ValueError, match="num_blockz"):
        cpu_config(cls, tmp_path, transformers_continuous_batching_config={"num_blockz": 3})
    config = cpu_config(cls, tmp_path, transformers_continuous_batching_config='{"num_blocks": 8}')
    assert config.transformers_continuous_batching_config == {"num_blocks": 8}  # JSON from the command line
    monkeypatch.setattr(generation, "check_vllm_installed", lambda: None)  # as if vllm were installed
    assert cpu_config(cls, tmp_path, use_vllm=True).use_vllm


# ------------------------------------------------------------------------------------- importance-sampling correction
def test_importance_sampling_ratio_modes():
    from trl_extras.core.sampler_correction import importance_sampling_ratio, logprob_gap

    trainer = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -1.0]])
    engine = torch.tensor([[-1.5, -1.0, float("nan")], [-1.0, -3.0, -1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert sorted(logprob_gap(trainer, engine, mask).tolist()) == [0.0, 0.5, 1.0, 2.0]  # NaN and padding left out
    tok = importance_sampling_ratio(trainer, engine, mask, "token_truncate", None, 3.0)
    e = torch.tensor(0.5).exp()
    assert torch.allclose(tok, torch.tensor([[e, (-1.0 + 0 * e).exp(), 1.0], [1.0, 3.0, 0.0]]))
    seq = importance_sampling_ratio(trainer, engine, mask, "sequence_mask", None, 3.0)
    s0 = torch.tensor(-0.5).exp()  # 0.5 - 1.0 (+0 for the unscored token)
    assert torch.allclose(seq, torch.tensor([[s0, s0, s0], [0.0, 0.0, 0.0]]))  # exp(2) > 3: masked
    low = importance_sampling_ratio(trainer, engine, mask, "token_mask", 0.5, None)
    assert torch.allclose(low, torch.tensor([[e, 0.0, 1.0], [1.0, torch.tensor(2.0).exp(), 0.0]]))


# --------------------------------------------------------------------------- vLLM: the recording stand-in of the engine
class RecordingVLLMClient:
    """RECORDING STAND-IN of TRL's ``VLLMClient`` (a vLLM server): keeps its own copy of the model, loads every pushed
    tensor into it by name (strict: an unknown name or a missing one fails), records what happened, and samples from
    its copy with softmax(logits / T), returning the sampled tokens' log-probs as vLLM's processed_logprobs."""

    def __init__(self, model, events):
        from peft import PeftModel

        # a plain model, as vLLM holds it (a PEFT policy: its merged copy without LoRA layers)
        self.engine_model = (copy.deepcopy(model).merge_and_unload() if isinstance(model, PeftModel)
                             else copy.deepcopy(model)).eval()
        self.names = {n for n, _ in self.engine_model.named_parameters()}
        self.events = events
        self.pushed_names: list[list[str]] = []
        self.sampling_params: list[dict] = []

    def init_communicator(self, device=None):
        pass

    def update_named_params(self, metadata, named_params):
        names, state = [], {}
        for name, tensor in named_params:
            names.append(name)
            state[name] = tensor.detach().clone()
        assert [m[0] for m in metadata] == names
        self.pushed_names.append(names)
        unknown = set(names) - self.names
        assert not unknown, f"names vLLM would not know: {sorted(unknown)[:5]}"
        assert set(names) == self.names, f"not pushed: {sorted(self.names - set(names))[:5]}"
        with torch.no_grad():
            params = dict(self.engine_model.named_parameters())
            for name, tensor in state.items():
                params[name].copy_(tensor)
        self.events.append("sync")

    def reset_prefix_cache(self):
        pass

    @torch.no_grad()
    def generate(self, prompts, features=None, n=1, repetition_penalty=1.0, temperature=1.0, top_p=1.0, top_k=0,
                 min_p=0.0, max_tokens=16, logprobs=0, structured_outputs_regex=None, generation_kwargs=None):
        self.events.append("generate")
        self.sampling_params.append(dict(n=n, repetition_penalty=repetition_penalty, temperature=temperature,
                                         top_p=top_p, top_k=top_k, min_p=min_p, max_tokens=max_tokens))
        eos = self.engine_model.config.eos_token_id
        completions, all_logprobs = [], []
        for ids in prompts:
            for _ in range(n):
                seq, out, lps = list(ids), [], []
                for _ in range(max_tokens):
                    logits = self.engine_model(torch.tensor([seq])).logits[0, -1].float() / temperature
                    logp = torch.log_softmax(logits, -1)
                    token = int(torch.multinomial(logp.exp(), 1))
                    out.append(token)
                    lps.append([float(logp[token])])
                    seq.append(token)
                    if token == eos:
                        break
                completions.append(out)
                all_logprobs.append(lps)
        return {"prompt_ids": prompts, "completion_ids": completions, "logprobs": all_logprobs}


def _recording_engine_class(events, clients):
    from trl.generation.vllm_generation import VLLMGeneration

    class RecordingVLLMGeneration(VLLMGeneration):
        """TRL's VLLMGeneration in server mode with the recording stand-in client (no vLLM, no server)."""

        def _init_vllm(self):
            self.mode = "server"
            self.vllm_client = RecordingVLLMClient(self.model, events)
            clients.append(self.vllm_client)

    return RecordingVLLMGeneration


@pytest.fixture
def recording_vllm(monkeypatch):
    """``use_vllm=True`` builds the recording stand-in instead of vLLM (and the config-time check is skipped)."""
    import trl.generation.vllm_generation as vg

    events, clients = [], []
    monkeypatch.setattr(generation, "check_vllm_installed", lambda: None)
    monkeypatch.setattr(vg, "VLLMGeneration", _recording_engine_class(events, clients))
    return events, clients


def _reward(prompts, completions, **kw):
    return [float(len(c)) for c in completions]


def test_vllm_sampler_sets_every_truncation_off_and_refuses_what_vllm_cannot_do(policy, recording_vllm):
    from accelerate import Accelerator

    events, clients = recording_vllm
    model, tok = policy
    args = type("Args", (), dict(use_vllm=True, use_transformers_continuous_batching=False, vllm_mode="server",
                                 vllm_server_base_url=None, vllm_server_host="0.0.0.0", vllm_server_port=8000,
                                 vllm_server_timeout=1.0, vllm_group_port=51216, vllm_tensor_parallel_size=1,
                                 vllm_gpu_memory_utilization=0.3, vllm_max_model_length=None,
                                 vllm_enable_sleep_mode=False, vllm_model_impl="vllm"))()
    sampler = make_sampler(args, model, tok, Accelerator())
    assert isinstance(sampler, VLLMSampler) and sampler.needs_weight_sync
    torch.manual_seed(0)
    r = sampler.sample(model, tok, ["3 1 >", "7 2 5 >"], num_generations=3,
                       spec=SamplingSpec(max_new_tokens=4, temperature=0.7))
    assert r.completion_ids.shape[0] == 6 and r.group_index.tolist() == [0, 0, 0, 1, 1, 1]
    params = clients[0].sampling_params[-1]
    assert params == dict(n=3, repetition_penalty=1.0, temperature=0.7, top_p=1.0, top_k=0, min_p=0.0, max_tokens=4)
    assert torch.isfinite(r.sampler_logprobs[r.completion_mask.bool()]).all()
    with pytest.raises(ValueError, match="no vLLM equivalent"):
        sampler.sample(model, tok, ["3 1 >"], spec=SamplingSpec(max_new_tokens=2, generation_kwargs={"typical_p": 0.5}))


def test_ppo_syncs_after_every_update_before_the_next_rollout_and_never_twice(tiny_paths, tmp_path, recording_vllm):
    """PPO with the recording stand-in of vLLM and a LoRA policy: one push before each rollout that follows an update
    (and one before the first), none for an evaluation when nothing changed; the names carry no PEFT prefix (strict
    load into a plain model), the policy is unmerged afterwards, and since the stand-in samples from the pushed
    weights the engine's log-probs match the trainer's (rollout/logprob_gap)."""
    from peft import LoraConfig

    from trl_extras import PPOConfig, PPOTrainer

    events, clients = recording_vllm
    args = cpu_config(PPOConfig, tmp_path, use_vllm=True, vllm_mode="server", per_device_train_batch_size=2,
                      num_ppo_epochs=2, max_completion_length=3, max_steps=4, learning_rate=1e-2,
                      value_learning_rate=1e-2, seed=0)
    data = Dataset.from_dict({"prompt": ["3 1 >", "7 2 5 >", "1 >", "4 4 >"] * 2})
    trainer = PPOTrainer(tiny_paths["policy"], _reward, args=args, train_dataset=data, eval_dataset=data.select(range(2)),
                         peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_alpha=8))
    for phase in ("eval", "eval", "train", "eval", "eval"):
        events.append(phase)
        trainer.evaluate() if phase == "eval" else trainer.train()
    logged = trainer.state.log_history
    collapsed = [e for i, e in enumerate(events) if e != "generate" or i == 0 or events[i - 1] != "generate"]
    assert collapsed == [
        "eval", "sync", "generate",  # eval-only before training: the first rollout pushes (TRL does the same)
        "eval", "generate",  # nothing changed: no push
        "train", "generate",  # step 0: still the pushed weights
        "sync", "generate",  # step 2, after 2 updates (2 epochs per rollout batch): one push
        "eval", "sync", "generate",  # after the updates of steps 2 and 3
        "eval", "generate",
    ], events
    names = clients[0].pushed_names[-1]
    assert not any(("base_model" in n) or ("lora_" in n) or ("base_layer" in n) for n in names)
    assert not any(getattr(m, "merged", False) for m in trainer.policy.modules())  # merge -> push -> unmerge
    gaps = [v for logs in logged for k, v in logs.items() if k == "rollout/logprob_gap/max"]
    assert gaps and max(gaps) < 1e-3, gaps
    assert any("rollout/importance_sampling_ratio/mean" in logs for logs in logged)


def test_ppo_default_backend_never_syncs(tiny_paths, tmp_path, monkeypatch):
    from trl_extras import PPOConfig, PPOTrainer

    args = cpu_config(PPOConfig, tmp_path, per_device_train_batch_size=2, max_completion_length=2, max_steps=1)
    trainer = PPOTrainer(tiny_paths["policy"], _reward, args=args,
                         train_dataset=Dataset.from_dict({"prompt": ["3 1 >", "1 >"] * 2}))
    calls = []
    monkeypatch.setattr(trainer.sampler, "sync_weights", lambda model: calls.append(model))
    trainer.train()
    assert isinstance(trainer.sampler, GenerateSampler) and calls == []


def test_cem_syncs_once_per_round(tiny_paths, tmp_path, recording_vllm):
    """CEM with the recording stand-in: the initial evaluation pushes, round r samples the weights evaluated before it
    (no second push), the evaluation after each round's fine-tune pushes once: 1 + num_rounds pushes."""
    from trl_extras import CEMConfig, CEMTrainer

    events, _ = recording_vllm
    args = cpu_config(CEMConfig, tmp_path, use_vllm=True, vllm_mode="server", num_rounds=2, num_generations=2,
                      max_completion_length=3, per_device_train_batch_size=2, eval_num_generations=1,
                      learning_rate=1e-3)
    data = Dataset.from_dict({"prompt": ["3 1 >", "7 2 5 >", "1 >", "4 4 >"]})
    trainer = CEMTrainer(tiny_paths["policy"], _reward, args=args, train_dataset=data, eval_dataset=data.select(range(2)))
    trainer.train()
    assert events.count("sync") == 1 + args.num_rounds, events
    # eval(-1), round 0, eval(0), round 1, eval(1): a push before the first and after each fine-tune only
    sync_positions = [i for i, e in enumerate(events) if e == "sync"]
    assert events[0] == "sync" and events[sync_positions[1] - 1] == "generate"


# ------------------------------------------------------------------ continuous batching inside the trainers (CPU)
def test_ppo_and_cem_run_with_continuous_batching(tiny_paths, tmp_path):
    from trl_extras import CEMConfig, CEMTrainer, PPOConfig, PPOTrainer

    data = Dataset.from_dict({"prompt": ["3 1 >", "7 2 5 >", "1 >", "4 4 >"]})
    args = cpu_config(PPOConfig, tmp_path / "ppo", use_transformers_continuous_batching=True,
                      per_device_train_batch_size=2, max_completion_length=3, max_steps=2)
    trainer = PPOTrainer(tiny_paths["policy"], _reward, args=args, train_dataset=data)
    trainer.train()
    logged = trainer.state.log_history
    assert isinstance(trainer.sampler, ContinuousBatchingSampler)
    gaps = [v for logs in logged for k, v in logs.items() if k == "rollout/logprob_gap/max"]
    assert gaps and max(gaps) < 1e-3, gaps  # same weights, same softmax(logits / T)
    assert not any("importance_sampling" in k for logs in logged for k in logs)  # vLLM only, as in TRL
    args = cpu_config(CEMConfig, tmp_path / "cem", use_transformers_continuous_batching=True, num_rounds=1,
                      num_generations=2, max_completion_length=3, per_device_train_batch_size=2)
    history = CEMTrainer(tiny_paths["policy"], _reward, args=args, train_dataset=data).train()
    assert history[0]["num_samples"] == 8
