"""`build_run` turns a config into everything a run needs, once, and the default command honours
command-line overrides of the keys other defaults derive from."""

from __future__ import annotations

import json

import pytest

from trainlab.algorithms import schedules
from trainlab.training import optimizers
from trainlab.training.run import build_run
from trainlab.training.trainer import Trainer


@pytest.mark.parametrize("opt", ["adamw", "sophia", "eco_adamw"])
def test_building_a_run_constructs_the_schedule_and_optimizer_once(opt, monkeypatch):
  from experiments import lm
  config = lm.get_config(f"size=test,opt={opt}")
  calls = {"schedule": 0, "optimizer": 0}
  entry = optimizers.OPTIMIZERS[opt]
  schedule_builder = schedules.SCHEDULES[config.schedule.name]

  def counted(kind, fn):
    def wrapper(*args, **kwargs):
      calls[kind] += 1
      return fn(*args, **kwargs)
    return wrapper

  monkeypatch.setitem(schedules.SCHEDULES, config.schedule.name,
                      counted("schedule", schedule_builder))
  monkeypatch.setitem(optimizers.OPTIMIZERS, opt,
                      optimizers.Optimizer(counted("optimizer", entry.build), entry.support))
  trainer = Trainer(build_run(config))
  state, _ = trainer.train_step(trainer.init_state(), trainer.step_batch(0))
  assert calls == {"schedule": 1, "optimizer": 1}
  assert int(state.step) == 1


def test_default_command_with_fewer_steps_derives_a_shorter_warmup(run_module, tmp_path):
  """Issue 2's promise: `python -m launch.train --config.total_steps=30` works."""
  result = run_module("launch.train", "--config.total_steps=30", "--workdir", str(tmp_path))
  assert result.returncode == 0, result.stderr[-2000:]
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["total_steps"] == 30 and config["schedule"]["warmup_steps"] == 3
  assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 30
