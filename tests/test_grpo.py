"""GRPO trainer: group advantages and the clipped token-mean loss against NumPy float64
transcriptions, static shapes across allocations, allocation within budget, end-to-end runs,
exact resume after SIGKILL, SIGTERM and SIGINT."""

from __future__ import annotations

import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainlab.data import arithmetic
from experiments import rl
from trainlab.algorithms import allocator_study, grpo
from trainlab.errors import UsageError
from trainlab.training import grpo as grpo_training
from trainlab.training import preemption
from trainlab.training import workdir as workdir_lib

REPO = pathlib.Path(__file__).resolve().parent.parent


def _np_advantages(rewards, groups, valid, eps=1e-6):
  """GRPO eq. 3: (r - mean of its group) / (unbiased std of its group + eps); 0 on padding."""
  out = np.zeros(len(rewards))
  for g in set(groups[valid].tolist()):
    members = valid & (groups == g)
    r = rewards[members].astype(np.float64)
    std = r.std(ddof=1) if r.size > 1 else 0.0  # one rollout: centered reward is 0 anyway
    out[members] = (r - r.mean()) / (std + eps)
  return out


def test_advantages_are_group_normalized():
  rng = np.random.default_rng(0)
  counts = np.array([2, 5, 8, 3, 1, 6])
  group, valid = grpo.rollout_buffer(counts, 32)
  rewards = (rng.random(32) < 0.5).astype(np.float32) * valid
  rewards[:2] = [1.0, 1.0]  # an all-equal group has zero advantage
  got = grpo.group_advantages(jnp.asarray(rewards), jnp.asarray(group), jnp.asarray(valid),
                              len(counts))
  want = _np_advantages(rewards, group, valid)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(got)[~valid] == 0.0)
  # Non-degenerate groups have mean 0 and unbiased variance ~1 after normalization.
  for g in (1, 2, 5):
    a = np.asarray(got)[valid & (group == g)]
    if np.ptp(rewards[valid & (group == g)]) > 0:
      assert abs(a.mean()) < 1e-5 and abs(a.var(ddof=1) - 1.0) < 1e-3


def test_clipped_loss_matches_numpy():
  rng = np.random.default_rng(1)
  logp = np.log(rng.uniform(0.05, 1.0, (6, 5)))
  old = logp + rng.normal(0.0, 0.4, (6, 5))
  adv = rng.normal(size=6)
  mask = (rng.random((6, 5)) < 0.7).astype(np.float64)
  eps = 0.2
  ratio = np.exp(logp - old)
  surrogate = np.minimum(ratio * adv[:, None], np.clip(ratio, 1 - eps, 1 + eps) * adv[:, None])
  want = -(surrogate * mask).sum() / mask.sum()
  loss, clip_frac = grpo.clipped_token_loss(
      *(jnp.asarray(x, jnp.float32) for x in (logp, old, adv, mask)), eps)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  is_clipped = (ratio * adv[:, None]) > np.clip(ratio, 1 - eps, 1 + eps) * adv[:, None]
  np.testing.assert_allclose(float(clip_frac), (is_clipped * mask).sum() / mask.sum(), rtol=1e-6)


def test_answer_mask_stops_after_first_eos():
  e, d = arithmetic.EOS, 3
  answers = jnp.array([[d, e, d, e], [e, d, d, d], [d, d, d, d]])
  np.testing.assert_array_equal(np.asarray(grpo.answer_mask(answers, arithmetic.EOS)),
                                [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]])


def test_is_correct_checks_up_to_eos():
  problems = arithmetic.make_problems(0, "pool", 0, 3, max_add_digits=2, max_mul_digits=1)
  generated = problems.answers_NxA.copy()
  generated[0, problems.answer_len_N[0]:] = 5  # tokens after EOS do not matter
  generated[1, 0] = (generated[1, 0] % 10) + 1  # a wrong first digit
  np.testing.assert_array_equal(
      arithmetic.is_correct(generated, problems.answers_NxA, problems.answer_len_N), [1, 0, 1])
  a, op, b = problems.text[2].split("=")[0].partition("*") if "*" in problems.text[2] \
      else problems.text[2].split("=")[0].partition("+")
  value = int(a) * int(b) if op == "*" else int(a) + int(b)
  assert problems.text[2].split("=")[1] == str(value)[::-1] + "."


@pytest.mark.parametrize("allocator", ["exact", "official"])
@pytest.mark.parametrize("seed", range(5))
def test_knapsack_allocation_respects_total_and_buffer(seed, allocator):
  config = rl.get_config(f"size=test,allocation=knapsack,allocator={allocator}")
  rng = np.random.default_rng(seed)
  rates = rng.choice([0.0, 1.0, 0.1, 0.5, 0.9, np.nan], size=32)
  config.rl.prompts_per_step = 32
  config.task.pool_size = 32
  budget = 32 * config.rl.rollouts_per_prompt
  trainer = grpo_training.GRPOTrainer(config)
  counts, skipped = trainer.allocate(np.nan_to_num(rates), ~np.isnan(rates))
  assert counts.sum() <= budget and counts.min() >= config.rl.min_rollouts and not skipped
  assert np.all(counts[np.isnan(rates)] == config.rl.rollouts_per_prompt)
  if allocator == "exact":
    assert np.all(counts <= config.rl.max_rollouts)
  else:  # the official allocator spends the budget exactly
    assert counts.sum() == budget
  group, valid = grpo.rollout_buffer(counts, budget)
  np.testing.assert_array_equal(np.bincount(group[valid], minlength=32), counts)
  assert valid.sum() == counts.sum()
  config.allocation = "uniform"
  uniform, _ = grpo_training.GRPOTrainer(config).allocate(np.nan_to_num(rates), ~np.isnan(rates))
  assert uniform.sum() == budget and np.all(uniform == config.rl.rollouts_per_prompt)


def test_one_compile_serves_every_allocation():
  config = rl.get_config("size=test,allocation=knapsack")
  trainer = grpo_training.GRPOTrainer(config)
  state = trainer.init_state()
  pool = np.arange(config.rl.prompts_per_step)
  rng = np.random.default_rng(0)
  for step, counts in enumerate([np.array([8, 8, 8, 8]), np.array([2, 2, 3, 25]),
                                 np.array([2, 2, 2, 2])]):
    group, valid = grpo.rollout_buffer(counts, trainer.buffer_size)
    prompts = trainer.pool.prompts_NxP[pool[group]]
    answers, old_logp = trainer.sample(state.params, prompts, jax.random.PRNGKey(step))
    rewards = (rng.random(trainer.buffer_size) < 0.5).astype(np.float32) * valid
    state, metrics = trainer.rl_step(state, prompts, np.asarray(answers), old_logp, rewards,
                                     group, valid)
    assert np.isfinite(float(metrics["loss"]))
  assert trainer.sample._cache_size() == 1
  assert trainer.rl_step._cache_size() == 1
  assert int(state.step) == 3


def _records(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_end_to_end_run_writes_metrics_and_is_deterministic(run_module, tmp_path):
  result = run_module("launch.rl", "--config", "experiments/rl.py:size=test,allocation=knapsack",
                      "--workdir", str(tmp_path / "run"))
  assert result.returncode == 0, result.stderr[-2000:]
  records = _records(tmp_path / "run" / "metrics.jsonl")
  config = rl.get_config("size=test,allocation=knapsack")
  assert [r["step"] for r in records] == list(range(config.total_steps + 1))
  budget = config.rl.prompts_per_step * config.rl.rollouts_per_prompt
  for r in records[1:]:
    assert 0.0 <= r["effective_rollout_ratio"] <= 1.0 and np.isfinite(r["loss"])
    assert r["rollouts_used"] <= budget
    assert sum(v for k, v in r.items() if k.startswith("alloc_hist/")) == \
        config.rl.prompts_per_step
  assert "heldout_pass_rate" in records[0] and "heldout_pass_rate" in records[-1]
  log = grpo_training.read_rollout_log(tmp_path / "run")
  np.testing.assert_array_equal(log["step_T"], np.arange(1, config.total_steps + 1))
  np.testing.assert_array_equal(log["rollouts_TxM"].sum(axis=1),
                                [r["rollouts_used"] for r in records[1:]])
  np.testing.assert_allclose(log["successes_TxM"].sum(axis=1) / budget,
                             [r["train_reward"] * r["rollouts_used"] / budget
                              for r in records[1:]], rtol=1e-6)
  assert np.isnan(log["estimate_TxM"][0]).all()  # no prompt has history at step 1
  study = allocator_study.replay(log["pool_TxM"], log["rollouts_TxM"], log["successes_TxM"],
                                 rollouts_per_prompt=8, min_rollouts=2, max_rollouts=128)
  assert set(study) == {"uniform", "exact", "official"}
  lines = result.stderr.splitlines()
  assert any(line.startswith("warm start: 20 supervised steps") for line in lines)
  assert any(line.startswith("warm start done: loss") for line in lines)
  assert any(line.startswith(f"step {config.total_steps}/{config.total_steps}: reward") and
             "held-out pass" in line for line in lines)
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  again = grpo_training.train(config, tmp_path / "again", progress=False)
  assert again["params_sha256"] == summary["params_sha256"]


@pytest.mark.parametrize("override", ["--config.allocation=greedy",
                                      "--config.rl.allocator=greedy",
                                      "--config.rl.success_estimator=ema",
                                      "--config.task.pool_size=15"])
def test_bad_config_is_one_line_exit_2(run_module, tmp_path, override):
  result = run_module("launch.rl", "--config", "experiments/rl.py:size=test", override,
                      "--workdir", str(tmp_path))
  assert result.returncode == 2
  assert len(result.stderr.strip().splitlines()) == 1 and "error:" in result.stderr


# --- Save and resume -------------------------------------------------------------------------

RESUME_ARG = "size=test,allocation=knapsack,allocator=official,estimator=recent"
RESUME_STEPS = 12


def _resume_config():
  config = rl.get_config(RESUME_ARG)
  config.total_steps = RESUME_STEPS
  return config


@pytest.fixture(name="reference", scope="module")
def reference_fixture(tmp_path_factory):
  """An uninterrupted run of the resume tests' config, in this process."""
  workdir = tmp_path_factory.mktemp("reference")
  return grpo_training.train(_resume_config(), workdir, progress=False), workdir


def _start(workdir: pathlib.Path) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, "-m", "launch.rl", "--config", f"experiments/rl.py:{RESUME_ARG}",
       f"--config.total_steps={RESUME_STEPS}", "--workdir", str(workdir)],
      cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)


def _logged_steps(workdir: pathlib.Path) -> list[int]:
  path = workdir / "metrics.jsonl"
  steps = []
  for line in path.read_text().splitlines() if path.exists() else []:
    try:
      steps.append(json.loads(line)["step"])
    except json.JSONDecodeError:
      pass
  return steps


def _signal_at(workdir: pathlib.Path, step: int, sig: int) -> subprocess.CompletedProcess:
  """Starts the run and sends `sig` once `step` is logged (anti-hang limit only)."""
  process = _start(workdir)
  deadline = time.time() + 600
  while time.time() < deadline and process.poll() is None:
    logged = _logged_steps(workdir)
    if logged and logged[-1] >= step:
      process.send_signal(sig)
      break
    time.sleep(0.002)
  stdout, stderr = process.communicate(timeout=600)
  return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _assert_same_run(workdir: pathlib.Path, reference) -> str:
  """Finishes the run in `workdir`; it must equal the reference. Returns its stderr."""
  summary, reference_dir = reference
  process = _start(workdir)
  stdout, stderr = process.communicate(timeout=600)
  assert process.returncode == 0, stderr[-2000:]
  assert json.loads(stdout)["params_sha256"] == summary["params_sha256"]
  for name in ("metrics.jsonl", "rollouts.jsonl"):  # every line once, each as uninterrupted
    assert (workdir / name).read_text() == (reference_dir / name).read_text(), name
  rerun = json.loads((workdir / "summary.json").read_text())
  assert {k: v for k, v in rerun.items() if k != "wall_time_s"} == \
      {k: v for k, v in summary.items() if k != "wall_time_s"}
  return stderr


def _finalized_steps(workdir: pathlib.Path) -> list[int]:
  folder = workdir / "checkpoints"
  return sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit()) \
      if folder.exists() else []


def test_sigkill_at_a_random_step_then_rerun_is_exact(reference, tmp_path):
  step = random.Random().randint(0, RESUME_STEPS - 3)
  result = _signal_at(tmp_path, step, signal.SIGKILL)
  assert result.returncode == -signal.SIGKILL, (step, result.stderr[-2000:])
  saved = _finalized_steps(tmp_path)
  stderr = _assert_same_run(tmp_path, reference)
  if saved:  # resumed from its newest checkpoint, without redoing the warm start
    assert f"resumed from {tmp_path / 'checkpoints'} at step {saved[-1]}" in stderr
    assert "warm start" not in stderr, stderr[-2000:]


def test_sigterm_and_sigint_save_the_step_and_exit_then_rerun_is_exact(reference, tmp_path):
  rng = random.Random()
  first = rng.randint(1, RESUME_STEPS // 2 - 1)
  for sig, code, step in ((signal.SIGTERM, 143, first),
                          (signal.SIGINT, 130, rng.randint(first + 1, RESUME_STEPS - 3))):
    result = _signal_at(tmp_path, step, sig)
    assert result.returncode == code, (sig, step, result.stderr[-2000:])
    stopped = [line for line in result.stderr.splitlines() if line.startswith("stopped:")]
    assert len(stopped) == 1 and "after saving step" in stopped[0], result.stderr[-2000:]
    saved_step = int(stopped[0].split("after saving step ")[1].split(";")[0])
    assert saved_step >= step and saved_step in _finalized_steps(tmp_path)
    assert _logged_steps(tmp_path) == list(range(saved_step + 1))
  _assert_same_run(tmp_path, reference)


def test_resume_from_any_saved_step_skips_the_warm_start(reference, tmp_path, monkeypatch):
  """Only step 0 (saved right after the warm start) kept: the run resumes from it."""
  config = _resume_config()
  config.checkpoint.keep = 100
  grpo_training.train(config, tmp_path / "full", progress=False)
  assert _finalized_steps(tmp_path / "full") == [0, 2, 4, 6, 8, 10, 12]

  def no_warm_start(*args, **kwargs):
    raise AssertionError("the warm start ran again")

  monkeypatch.setattr(grpo_training.GRPOTrainer, "warm_start", no_warm_start)
  workdir = tmp_path / "from0"
  shutil.copytree(tmp_path / "full", workdir)
  for later in _finalized_steps(workdir)[1:]:
    shutil.rmtree(workdir / "checkpoints" / str(later))
  (workdir / "summary.json").unlink()
  summary = grpo_training.train(config, workdir, progress=False)
  assert summary["params_sha256"] == reference[0]["params_sha256"]
  assert (workdir / "metrics.jsonl").read_text() == (reference[1] / "metrics.jsonl").read_text()


def test_rerun_of_a_finished_run_trains_nothing_and_rewrites_the_summary(reference, tmp_path,
                                                                         monkeypatch, capsys):
  summary, reference_dir = reference
  shutil.copytree(reference_dir, tmp_path / "run")
  (tmp_path / "run" / "summary.json").write_text("{}")
  logs = {n: (tmp_path / "run" / n).read_text() for n in ("metrics.jsonl", "rollouts.jsonl")}

  def no_step(*args, **kwargs):
    raise AssertionError("a finished run trained again")

  monkeypatch.setattr(grpo_training.GRPOTrainer, "warm_start", no_step)
  monkeypatch.setattr(grpo_training.GRPOTrainer, "step_prompts", no_step)
  again = grpo_training.train(_resume_config(), tmp_path / "run", progress=False)
  assert {k: v for k, v in again.items() if k != "wall_time_s"} == \
      {k: v for k, v in summary.items() if k != "wall_time_s"}
  assert json.loads((tmp_path / "run" / "summary.json").read_text()) == again
  for name, text in logs.items():
    assert (tmp_path / "run" / name).read_text() == text
  assert "warning" not in capsys.readouterr().err
  changed = _resume_config()
  changed.eval.every_steps = 4
  grpo_training.train(changed, tmp_path / "run", progress=False)
  assert f"resuming step {RESUME_STEPS} of {tmp_path / 'run' / 'checkpoints'} with a changed " \
      "config (eval.every_steps)" in capsys.readouterr().err


def test_a_signal_during_the_warm_start_stops_it_as_a_preemption():
  trainer = grpo_training.GRPOTrainer(rl.get_config("size=test"))
  with pytest.raises(preemption.Preempted) as stopped:
    trainer.warm_start(trainer.init_state(), stop=lambda: signal.SIGTERM)
  assert stopped.value.signum == signal.SIGTERM and "during the warm start" in str(stopped.value)


def test_a_second_trainer_on_a_locked_workdir_is_a_usage_error_and_touches_nothing(tmp_path):
  with workdir_lib.hold(tmp_path / "run"):
    with pytest.raises(UsageError, match=f"in use by pid {os.getpid()}"):
      grpo_training.train(rl.get_config("size=test"), tmp_path / "run", progress=False)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["lock"]
