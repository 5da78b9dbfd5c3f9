"""The GRPO loop on a tiny random model: it trains, writes its outputs, resumes exactly, survives NaNs."""
import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import grpo.batch as grpo_batch
import grpo.train as train
from conftest import ROOT
from common.config import ConfigError, parse_config
from grpo.config import GRPOConfig
from lm.loading import tiny_model

# rewards that vary on a random model's gibberish, so advantages are not all zero
SIGNAL = dict(reward_funcs="tests.toy_rewards:vowel_share,format", reward_weights="1,1")


def tiny_config(tmp_path, **overrides):
    base = dict(model="tiny", group_size=4, prompts_per_step=2, max_completion_length=12, max_steps=4,
                micro_batch_size=3, learning_rate=1e-3, eval_every=-1, save_every=2, output_dir=str(tmp_path),
                **SIGNAL)
    return GRPOConfig(**{**base, **overrides})


def test_run_py_grpo_trains_and_writes_every_output(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "run.py", "grpo", "--model", "tiny", "--group-size", "4", "--prompts-per-step", "2",
           "--max-completion-length", "12", "--max-steps", "3", "--learning-rate", "1e-3", "--save-every", "2",
           "--eval-problems", "4", "--output-dir", str(out),  # and a reward written for TRL's chat prompts:
           "--reward-funcs", SIGNAL["reward_funcs"] + ",tests.toy_rewards:vowel_share_chat",
           "--beta", "0.04"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]           # eval before, then one line per step
    for key in ("loss", "lr", "reward", "reward_std", "reward/tests.toy_rewards:vowel_share", "kl", "clip_frac",
                "completion_len", "truncated_frac", "entropy", "grad_norm", "time_sampling", "time_training",
                "peak_memory_gib"):
        assert key in metrics[1], key
    assert "eval/accuracy" in metrics[0] and "eval/accuracy" in metrics[-1]
    for m in metrics[1:]:  # the update's phases (beta > 0: a reference pass) add up to within the update's time
        phases = [m["time_logprobs"], m["time_backward"], m["time_optimizer"]]
        assert all(t > 0 for t in phases) and sum(phases) <= m["time_training"] < m["time_step"]
    assert all(0 <= m["sampler_logp_gap"] < 1e-4 for m in metrics[1:])  # float32: sampler and trainer agree
    assert all(0.2 < m["peak_memory_gib"] < 8 for m in metrics[1:])       # the process's peak RSS, in GiB
    # the same share read from TRL's chat messages (completion[0]["content"]) as from strings
    assert all(m["reward/tests.toy_rewards:vowel_share_chat"] == m["reward/tests.toy_rewards:vowel_share"] > 0
               for m in metrics[1:])
    assert "reward tests.toy_rewards:vowel_share_chat: takes chat messages" in proc.stderr
    assert json.loads((out / "config.json").read_text())["group_size"] == 4
    samples = [json.loads(l) for l in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * 2
    from tasks import load_math  # each sample names its problem's gold answer (the boxed value)
    golds = {r["problem"]: r["solution"] for r in load_math("arithmetic", "train", 5000)}
    assert all(f"\\boxed{{{s['gold']}}}" in golds[s["prompt"]] for s in samples)
    assert f"last checkpoint: {out / 'checkpoint-3'}" in proc.stdout and "reward " in proc.stdout
    assert (out / "training_curves.png").stat().st_size > 1000
    # redrawn at most every 30 s at a checkpoint, but always at the last: drawn after the last step's line
    assert (out / "training_curves.png").stat().st_mtime_ns >= (out / "metrics.jsonl").stat().st_mtime_ns
    trained = AutoModelForCausalLM.from_pretrained(out / "checkpoint-3")
    start = tiny_model()
    changed = [not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), start.state_dict().values())]
    assert sum(changed) > len(changed) // 2                     # parameters moved


def test_grpo_raises_the_reward_it_is_given(tmp_path):
    # The whole loop's direction: with the vowel share as the only reward, 10 steps of GRPO on the tiny
    # random model take the mean reward from ~0.07 (random characters) past 0.5. A flipped sign in the
    # advantage, the loss or the optimizer step drives it to 0 instead; no update leaves it near 0.07.
    train.main(tiny_config(tmp_path, max_steps=10, learning_rate=1e-2, prompts_per_step=4, group_size=8,
                           micro_batch_size=32, save_every=100, reward_funcs="tests.toy_rewards:vowel_share",
                           reward_weights="1"))
    rewards = [json.loads(l)["reward"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rewards[0] < 0.15 and rewards[-1] > 0.5, rewards


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    kw = dict(lr_scheduler="cosine", warmup_ratio=0.25, num_iterations=2, beta=0.04)
    full = tiny_config(tmp_path / "full", **kw)
    train.main(full)
    expected = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]

    calls = {"n": 0}
    real_sample = grpo_batch.sample   # the step's sampling (grpo/batch.py)

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("power cut")
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(grpo_batch, "sample", crash_on_third)
    with pytest.raises(RuntimeError, match="power cut"):
        train.main(tiny_config(tmp_path / "cut", **kw))
    monkeypatch.setattr(grpo_batch, "sample", real_sample)
    torch.manual_seed(12345)  # a different global RNG state: the checkpoint must restore it
    train.main(tiny_config(tmp_path / "other", resume=str(tmp_path / "cut"), **kw))
    got = [json.loads(l) for l in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in got] == [1, 2, 3, 4]
    for a, b in zip(expected, got):
        for key, value in a.items():
            if not key.startswith("time_") and key != "peak_memory_gib":   # wall-clock and memory vary
                assert b[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (a["step"], key)


def test_non_finite_loss_skips_then_stops_after_three_keeping_last_checkpoint(tmp_path, monkeypatch):
    real_loss = train.grpo_loss
    calls = {"n": 0}

    def nan_after_first_step(*args, **kwargs):
        calls["n"] += 1
        loss, stats = real_loss(*args, **kwargs)
        return (loss * float("nan") if calls["n"] > 1 else loss), stats

    monkeypatch.setattr(train, "grpo_loss", nan_after_first_step)
    with pytest.raises(RuntimeError, match="3 updates in a row had a non-finite loss.*step 4.*checkpoint-3"):
        train.main(tiny_config(tmp_path, micro_batch_size=8, save_every=1, max_steps=6, keep_checkpoints=10))
    metrics = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["skipped"] for m in metrics] == [0, 1, 1, 1]
    assert metrics[1]["loss"] is None and metrics[1]["grad_norm"] is None  # JSON null, not NaN
    assert not (tmp_path / "checkpoint-4").exists()
    # the skipped updates never touched the weights: checkpoint-3 holds step 1's good weights
    after_1 = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint-1").state_dict()
    after_3 = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint-3").state_dict()
    assert all(torch.equal(after_1[k], after_3[k]) and torch.isfinite(after_3[k]).all() for k in after_1)


def test_reference_and_old_logprobs_only_when_needed(tmp_path, monkeypatch):
    real = train.token_logprobs
    counts = {"no_grad": 0}

    def counting(*args, **kwargs):
        if not torch.is_grad_enabled():
            counts["no_grad"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "token_logprobs", counting)
    train.main(tiny_config(tmp_path / "a", max_steps=1, micro_batch_size=8))
    assert counts["no_grad"] == 0                    # beta 0, one update: no extra forward
    train.main(tiny_config(tmp_path / "b", max_steps=1, micro_batch_size=8, beta=0.1))
    assert counts["no_grad"] == 1                    # the reference forward
    train.main(tiny_config(tmp_path / "c", max_steps=1, micro_batch_size=8, beta=0.1, num_iterations=2))
    assert counts["no_grad"] == 3                    # reference + old


def test_bad_grpo_flags_fail_at_start_with_one_line(tmp_path):
    # as the user meets it: one process, one line on stderr, exit 2; the other messages from the parser
    proc = subprocess.run([sys.executable, "run.py", "grpo", "--group-size", "1"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "at least 2" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    for args, message in ((["--reward-funcs", "accuracy,nope"], "unknown reward nope"),
                          (["--loss-type", "ppo"], "--loss-type 'ppo'"),
                          (["--dtype", "half"], "--dtype 'half'"),
                          (["--offload-optimizer", "--fsdp"], "--offload-optimizer is for one GPU"),
                          (["--offload-reference"], "--offload-reference needs a reference model of its own")):
        with pytest.raises(ConfigError, match=message):
            parse_config(GRPOConfig, args, prog="run.py grpo")


def test_skipping_zero_advantage_completions_is_exact(tmp_path):
    # level-1 problems are a + b or a - b: the + groups get a constant reward, so advantage 0
    kw = dict(dataset="arithmetic:1", prompts_per_step=4, max_steps=2, micro_batch_size=4,
              reward_funcs="tests.toy_rewards:vowel_share_if_minus", reward_weights="1", save_every=2)
    skipped = train.main(tiny_config(tmp_path / "skip", **kw))
    full = train.main(tiny_config(tmp_path / "full", skip_zero_advantage=False, **kw))
    assert 0 < skipped["trained_frac"] < 1 and full["trained_frac"] == 1
    assert skipped["loss"] == pytest.approx(full["loss"], abs=1e-7)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "skip" / "checkpoint-2").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "checkpoint-2").state_dict()
    # Adam divides by sqrt(v): summation-order rounding in near-zero gradients moves a weight by up to
    # ~1e-6 here; a wrong update would move it by about lr = 1e-3 per step.
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_resume_continues_the_run_it_names_with_its_settings(tmp_path):
    # the run was started with a dataset, group size and rewards of its own; `--resume` alone (plus a
    # longer --max-steps) must continue it with them, not with today's defaults
    from common.runlog import read_jsonl, write_config
    from sft.train import SFTConfig
    parse = lambda *argv: parse_config(GRPOConfig, list(argv), prog="run.py grpo")
    first = parse("--model", "tiny", "--dataset", "arithmetic:1", "--group-size", "4", "--prompts-per-step", "2",
                  "--max-completion-length", "12", "--max-steps", "2", "--save-every", "2", "--eval-every", "-1",
                  "--reward-funcs", SIGNAL["reward_funcs"], "--reward-weights", "1,1", "--learning-rate", "1e-3",
                  "--output-dir", str(tmp_path))
    train.main(first)
    resumed = parse("--resume", str(tmp_path), "--max-steps", "3")
    assert {k: v for k, v in vars(resumed).items() if k not in ("resume", "max_steps")} == \
        {k: v for k, v in vars(first).items() if k not in ("resume", "max_steps")}
    train.main(resumed)
    assert json.loads((tmp_path / "config.json").read_text())["dataset"] == "arithmetic:1"
    assert [m["step"] for m in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    assert parse("--resume", str(tmp_path / "checkpoint-3"), "--group-size", "4").group_size == 4  # the same: fine
    with pytest.raises(ConfigError, match=r"--group-size 8 differs from the run's 4; a resumed run keeps"):
        parse("--resume", str(tmp_path), "--group-size", "8")
    with pytest.raises(ConfigError, match=r"--dataset 'arithmetic' differs from the run's 'arithmetic:1'"):
        parse("--resume", str(tmp_path), "--dataset", "arithmetic")
    with pytest.raises(ConfigError, match="--output-dir .* is another folder"):
        parse("--resume", str(tmp_path), "--output-dir", str(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError, match="nowhere: no such folder"):
        parse("--resume", str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty: no config.json there"):
        parse("--resume", str(tmp_path / "empty"))
    # the same rule for sft (and distill: one parser)
    write_config(tmp_path / "sft", SFTConfig(model="tiny", max_length=700, learning_rate=3e-4))
    assert parse_config(SFTConfig, ["--resume", str(tmp_path / "sft")], prog="run.py sft").max_length == 700


def test_the_loop_reads_like_its_docstring():
    # issue 28: main is the step's outline (set up; sample and score; advantages; update; record);
    # each phase is a named function of grpo/train.py a reader can find and test
    import inspect
    assert len(inspect.getsource(train.main).splitlines()) <= 100
    for phase in ("set_up", "sample_and_score", "advantages", "update", "step_record", "write_step", "save"):
        assert callable(getattr(train, phase)) and f"{phase}(" in inspect.getsource(train.main), phase


def test_activation_offload_keeps_the_backward_passs_tensors_in_host_memory_and_the_same_update(tmp_path, monkeypatch):
    # on a CPU save_on_cpu moves nothing, so what can be checked here is that the training forward
    # passes (GRPO's and SFT's) run under it, every saved tensor through its pack hook, and that the
    # update is the one without it (the GPU's transfers: bench/gpu_check.sh)
    from sft.train import SFTConfig, main as sft_main
    packed = {"n": 0, "ptrs": set()}
    real = torch.autograd.graph.save_on_cpu

    class Counting(real):
        def __init__(self, pin_memory=False, device_type="cuda"):
            super().__init__(pin_memory, device_type)
            pack = self.pack_hook

            def counted(tensor):
                packed["n"] += 1
                packed["ptrs"].add(tensor.data_ptr())
                return pack(tensor)
            self.pack_hook = counted

    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", Counting)
    runs = {}
    for offload in (False, True):
        out = tmp_path / f"grpo-{offload}"
        train.main(tiny_config(out, max_steps=1, save_every=1, activation_offload=offload))
        runs[offload] = AutoModelForCausalLM.from_pretrained(out / "checkpoint-1").state_dict()
        if not offload:
            assert packed["n"] == 0
    assert packed["n"] > 50                          # every layer's saved tensors, for each micro-batch
    assert all(torch.equal(runs[False][k], runs[True][k]) for k in runs[False])
    # with checkpointing, what it keeps for the recomputation, each layer's input, goes through the hook too
    from common.memory import activation_offload
    from lm.loading import enable_checkpointing, tiny_model
    model, inputs = tiny_model(), []
    enable_checkpointing(model)
    for layer in model.model.layers:
        layer.register_forward_pre_hook(lambda module, args, kwargs: inputs.append(
            (kwargs.get("hidden_states", args[0] if args else None)).data_ptr()), with_kwargs=True)
    packed["ptrs"].clear()
    model.train()
    with activation_offload(True, "cpu"):
        model.model(input_ids=torch.randint(0, 100, (2, 10)), use_cache=False)
    assert len(inputs) == 2 and set(inputs) <= packed["ptrs"]
    before = packed["n"]
    kw = dict(model="tiny", train_examples=8, max_length=700, gradient_accumulation_steps=1, eval_every=-1,
              max_steps=1, save_every=1)
    sft_main(SFTConfig(**kw, output_dir=str(tmp_path / "sft"), activation_offload=True))
    assert packed["n"] > before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_parked_reference_and_offloaded_activations_move_memory_not_the_update(tmp_path):
    kw = dict(max_steps=2, save_every=2, beta=0.1, device="cuda")
    run, _, _ = train.set_up(tiny_config(tmp_path / "setup", offload_reference=True, **kw))
    weight = next(run.ref_model.model.parameters())
    assert weight.device.type == "cpu" and weight.is_pinned()      # between uses: pinned host memory
    with run.ref_model.visit() as ref:
        assert next(ref.parameters()).device.type == "cuda"
    assert next(run.ref_model.model.parameters()).device.type == "cpu"
    plain = train.main(tiny_config(tmp_path / "plain", **kw))
    moved = train.main(tiny_config(tmp_path / "moved", offload_reference=True, activation_offload=True, **kw))
    assert moved["loss"] == pytest.approx(plain["loss"], abs=1e-6) and moved["kl"] == pytest.approx(plain["kl"], abs=1e-7)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "plain" / "checkpoint-2").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "moved" / "checkpoint-2").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_offloaded_optimizer_makes_the_same_updates_clipped_and_resumed(tmp_path):
    # max_grad_norm 1e-3: every step is clipped, which must reach the host's copies of the gradients
    kw = dict(max_steps=3, save_every=1, keep_checkpoints=5, device="cuda", max_grad_norm=1e-3)
    plain = train.main(tiny_config(tmp_path / "plain", **kw))
    host = train.main(tiny_config(tmp_path / "host", offload_optimizer=True, **kw))
    assert host["loss"] == pytest.approx(plain["loss"], abs=1e-6)
    weights = lambda run: AutoModelForCausalLM.from_pretrained(tmp_path / run / "checkpoint-3").state_dict()
    a, b = weights("plain"), weights("host")
    start = AutoModelForCausalLM.from_pretrained(tmp_path / "plain" / "checkpoint-1").state_dict()
    assert any((a[k] - start[k]).abs().max() > 1e-5 for k in a)                   # the weights moved
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)                # the same updates
    kw.update(max_steps=4, offload_optimizer=True)
    train.main(tiny_config(tmp_path / "host", **kw, resume=str(tmp_path / "host")))
    train.main(tiny_config(tmp_path / "again", **kw))                            # 4 steps, uninterrupted
    resumed = AutoModelForCausalLM.from_pretrained(tmp_path / "host" / "checkpoint-4").state_dict()
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "again" / "checkpoint-4").state_dict()
    assert all(torch.allclose(again[k], resumed[k], atol=1e-6) for k in a)      # resumed exactly
