"""Bad input a user can cause ends in one line naming the problem, exit code 2, no traceback."""

from __future__ import annotations

import pytest

TEST = "experiments/lm.py:size=test"
BAD_INPUTS = {
    "unknown key": (["--config", TEST, "--config.optimizer.nope=1"], "nope"),
    "wrong type": (["--config", TEST, "--config.total_steps=abc"], "total_steps"),
    "negative steps": (["--config", TEST, "--config.total_steps=-5"], "total_steps"),
    "warmup longer than run": (["--config", TEST, "--config.schedule.warmup_steps=1000"],
                               "warmup_steps"),
    "unknown optimizer": (["--config", TEST, "--config.optimizer.name=adamx"], "optimizer.name"),
    "optimizer argument it does not take": (
        ["--config", TEST, "--config.optimizer.name=sgd"], "optimizer.b1"),
    "unknown schedule": (["--config", TEST, "--config.schedule.name=cosinus"], "schedule.name"),
    "unknown dataset": (["--config", TEST, "--config.data.name=wikitext"], "data.name"),
    "missing dataset": (["--config", "experiments/image.py:data=fashion-mnist",
                         "--config.data.path=/nonexistent"], "apt-get install"),
    "unknown config variant": (["--config", "experiments/lm.py:size=huge"], "size"),
    "config argument typo": (["--config", "experiments/lm.py:sise=tiny"], "sise"),
    "missing config file": (["--config", "experiments/nope.py"], "nope.py"),
    "context shorter than sequence": (["--config", TEST, "--config.data.seq_len=64"],
                                      "context_len"),
    "model field that does not exist": (["--config", TEST, "--config.model.name=mlp"],
                                        "model."),
    "heads do not divide width": (["--config", TEST, "--config.model.num_heads=3"], "num_heads"),
    "zero batch": (["--config", TEST, "--config.batch_size=0"], "batch_size"),
    "stray positional argument": (["--config", TEST, "extra"], "extra"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(case, run_module, tmp_path):
  args, needle = BAD_INPUTS[case]
  result = run_module("launch.train", *args, "--workdir", str(tmp_path / "w"))
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr
  assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
  assert needle in lines[0]
  assert not (tmp_path / "w" / "summary.json").exists()


def test_batch_not_divisible_by_devices(run_module, tmp_path):
  result = run_module("launch.train", "--config", TEST, "--config.batch_size=12",
                      "--workdir", str(tmp_path / "w"),
                      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "not divisible by the 8 devices" in result.stderr
