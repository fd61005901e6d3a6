"""Train-step options that must not change the math: gradient accumulation over microbatches and
the chunked loss give the full-batch step's loss and update to float32 rounding."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from experiments import lm
from trainlab.training.run import build_run
from trainlab.training.trainer import Trainer


def _first_steps(config, steps=3):
  trainer = Trainer(build_run(config))
  state, losses = trainer.init_state(), []
  for step in range(steps):
    state, metrics = trainer.train_step(state, trainer.step_batch(step))
    losses.append(float(metrics["train_loss"]))
  return np.array(losses), jax.device_get(state.params), trainer


def _config(arch: str, opt: str, **overrides):
  config = lm.get_config(f"size=test,arch={arch},opt={opt}")
  if opt == "sophia":
    config.optimizer.update_interval = 2  # a Hessian refresh inside the 3 steps
  for key, value in overrides.items():
    section, name = key.split("__")
    config[section][name] = value
  return config


@pytest.mark.parametrize("arch,opt", [("gpt", "adamw"), ("llama", "sophia")])
def test_accumulation_and_chunked_loss_match_the_plain_step(arch, opt):
  base_losses, base_params, base = _first_steps(_config(arch, opt))
  for key, value in (("optimizer__accumulation_steps", 4), ("loss__chunk_size", 8)):
    losses, params, trainer = _first_steps(_config(arch, opt, **{key: value}))
    np.testing.assert_allclose(losses, base_losses, rtol=2e-6, err_msg=key)
    # Sophia divides by its Hessian estimate, which magnifies float32 rounding (up to 2.3e-6
    # after 3 steps under the suite's fast compile); a wrong accumulation is off by up to a
    # step, ~1e-3.
    atol = 5e-6 if opt == "sophia" else 1e-6
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=atol),
                 params, base_params)
    assert trainer.train_step._cache_size() == 1
    if opt == "sophia":  # rho * B * h still counts the Hessian batch's tokens
      assert trainer.run.support.tokens == base.run.support.tokens == 8 * 32


def test_accumulation_must_divide_the_batch_shards():
  from trainlab.errors import UsageError
  config = lm.get_config("size=test")
  config.optimizer.accumulation_steps = 3
  with pytest.raises(UsageError, match="accumulation_steps=3"):
    build_run(config)
