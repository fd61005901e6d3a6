"""Bad input a user can cause ends in one line naming the problem, exit code 2, no traceback.

The messages are checked in-process (`cli.parse` and `build_run` are what the entry points call);
two subprocess cases keep the exit-2 contract of the real command line.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys

import pytest

from launch import cli
from trainlab.errors import UsageError
from trainlab.training.run import build_run

TEST = "experiments/lm.py:size=test"
BAD_INPUTS = {
    "unknown key": (["--config", TEST, "--config.optimizer.nope=1"], "optimizer.nope"),
    "unknown key without --config": (["--config.total_step=10"], "did you mean total_steps"),
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
    "config argument of the wrong type": (["--config", "experiments/image.py:epochs=abc"],
                                          "epochs"),
    "missing config file": (["--config", "experiments/nope.py"], "nope.py"),
    "context shorter than sequence": (["--config", TEST, "--config.data.seq_len=64"],
                                      "context_len"),
    "model field that does not exist": (["--config", TEST, "--config.model.name=mlp"],
                                        "model."),
    "heads do not divide width": (["--config", TEST, "--config.model.num_heads=3"], "num_heads"),
    "zero batch": (["--config", TEST, "--config.batch_size=0"], "batch_size"),
    "infinite learning rate": (["--config", TEST, "--config.optimizer.learning_rate=inf"],
                               "learning_rate"),
    "unknown flag": (["--config", TEST, "--workdr=x"], "workdr"),
    "stray positional argument": (["--config", TEST, "extra"], "extra"),
    "nan learning rate": (["--config", TEST, "--config.optimizer.learning_rate=nan"],
                          "learning_rate"),
    "negative learning rate": (["--config", TEST, "--config.optimizer.learning_rate=-1e-3"],
                               "learning_rate"),
    "unknown nested key without --config": (["--config.optimizer.nme=adamw"],
                                            "did you mean optimizer.name"),
    "zero logging interval": (["--config", TEST, "--config.log.every_steps=0"],
                              "log.every_steps"),
    "two checkpoint sources": (["--config", TEST, "--config.checkpoint.resume_from=a",
                                "--config.checkpoint.init_from=b"], "both set"),
    "accumulation that does not divide the batch": (
        ["--config", TEST, "--config.optimizer.accumulation_steps=3"], "accumulation_steps"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_a_usage_error_naming_the_key(case):
  args, needle = BAD_INPUTS[case]
  with pytest.raises(UsageError) as raised:
    build_run(cli.parse(["launch.train", *args], "lm.py").config)
  message = str(raised.value)
  assert needle in message and "\n" not in message.strip(), message


def test_bad_input_on_the_command_line_is_one_line_and_exit_2(run_module, tmp_path):
  """The mistyped key without --config used to be a 53-line traceback."""
  result = run_module("launch.train", "--config.total_step=10", "--workdir", str(tmp_path / "w"))
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == 2, result.stderr
  assert len(lines) == 1 and lines[0].startswith("error:") and "total_steps" in lines[0]
  assert not (tmp_path / "w").exists()


def test_batch_not_divisible_by_devices(run_module, tmp_path):
  result = run_module("launch.train", "--config", TEST, "--config.batch_size=12",
                      "--workdir", str(tmp_path / "w"),
                      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "not divisible by the 8 batch shards" in result.stderr
  assert not (tmp_path / "w").exists()


def test_derived_defaults_follow_overrides():
  config = cli.parse(["launch.train", "--config.total_steps=30"], "lm.py").config
  assert config.schedule.warmup_steps == 3 and config.eval.every_steps == 7
  config = cli.parse(["launch.train", "--config.total_steps=30",
                      "--config.schedule.warmup_steps=5"], "lm.py").config
  assert config.schedule.warmup_steps == 5
  config = cli.parse(["launch.train", "--config.optimizer.learning_rate=1e-2"], "lm.py").config
  assert config.schedule.end_value == pytest.approx(1e-3)


def test_config_arguments_parse_by_type():
  from experiments import common
  args = common.parse_arg("flag=false,steps=3,lr=1e-3,names=a+b", flag=True, steps=1, lr=0.1,
                          names=("x",))
  assert args.flag is False and args.steps == 3 and args.lr == 1e-3
  assert args.names == ("a", "b")
  with pytest.raises(UsageError, match="flag='no' must be true or false"):
    common.parse_arg("flag=no", flag=True)


def test_default_workdir_is_a_function_of_the_resolved_config():
  a = cli.parse(["launch.train"], "lm.py")
  b = cli.parse(["launch.train"], "lm.py")
  c = cli.parse(["launch.train", "--config.seed=1"], "lm.py")
  assert cli.default_workdir(a, "train") == cli.default_workdir(b, "train")
  assert cli.default_workdir(a, "train") != cli.default_workdir(c, "train")
  assert cli.default_workdir(a, "train").name.startswith("train-lm-")


def test_did_you_mean_is_plain_text():
  with pytest.raises(UsageError) as raised:
    cli.parse(["launch.train", "--config.total_step=10"], "lm.py")
  assert str(raised.value) == ("--config.total_step is not a key of the config (did you mean "
                               "total_steps?); list the keys with --print_config")
  with pytest.raises(UsageError) as raised:
    cli.parse(["launch.train", "--config", TEST, "--config.total_step=10"], "lm.py")
  assert "did you mean total_steps?" in str(raised.value) and "\\" not in str(raised.value)


def test_runs_root_follows_trainlab_runs_dir(monkeypatch, tmp_path):
  command = cli.parse(["launch.train"], "lm.py")
  monkeypatch.delenv("TRAINLAB_RUNS_DIR", raising=False)
  assert cli.default_workdir(command, "train").parent == cli.REPO / "runs"
  monkeypatch.setenv("TRAINLAB_RUNS_DIR", str(tmp_path))
  assert cli.default_workdir(command, "train").parent == tmp_path


def test_plot_schedules_never_rewrites_the_committed_figure_by_default(monkeypatch, tmp_path):
  from launch import plot_schedules
  monkeypatch.delenv("TRAINLAB_RUNS_DIR", raising=False)
  out, _ = plot_schedules.parse(["plot_schedules"])
  assert out == cli.REPO / "runs" / "schedules.png"
  out, _ = plot_schedules.parse(["plot_schedules", "--out", "docs/schedules.png"])
  assert out == pathlib.Path("docs/schedules.png")  # regenerating it is explicit
  with pytest.raises(UsageError, match="--total-steps 0"):
    plot_schedules.parse(["plot_schedules", "--total-steps", "0"])


def test_loop_overhead_benchmark_flags_are_one_line_and_exit_2(run_module):
  """`--steps 10` used to end in a StatisticsError traceback after training."""
  result = run_module("benchmarks.loop_overhead", "--steps", "10")
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
  assert lines[0].startswith("error: --steps 10 must be >= 30")
  from benchmarks import loop_overhead
  with pytest.raises(UsageError, match="--rounds 0"):
    loop_overhead.main(["loop_overhead", "--rounds", "0"])
  with pytest.raises(UsageError, match="invalid int value"):
    loop_overhead.main(["loop_overhead", "--steps", "many"])


@pytest.fixture(name="sigterm_restored")
def sigterm_restored_fixture():
  previous = signal.getsignal(signal.SIGTERM)
  yield
  signal.signal(signal.SIGTERM, previous)


def _run_exit(main, monkeypatch, capsys) -> tuple[int, list[str]]:
  monkeypatch.setattr(sys, "argv", ["prog"])
  with pytest.raises(SystemExit) as exited:
    cli.run(main)
  return exited.value.code, [l for l in capsys.readouterr().err.splitlines() if l.strip()]


def test_cli_run_turns_every_stop_into_one_line_and_128_plus_the_signal(
    sigterm_restored, monkeypatch, capsys):
  """Preempted (what the reproduction runner relies on), Ctrl-C, and SIGTERM outside a loop."""
  from trainlab.training import preemption

  def preempted(argv):
    raise preemption.Preempted(7, signal.SIGTERM)

  def ctrl_c(argv):
    raise KeyboardInterrupt

  def sigterm(argv):
    os.kill(os.getpid(), signal.SIGTERM)  # cli.run's handler raises at the next bytecode
    raise AssertionError("SIGTERM was not turned into an exception")

  for main, code, needle in ((preempted, 143, "SIGTERM after saving step 7"),
                             (ctrl_c, 130, "interrupted (Ctrl-C)"),
                             (sigterm, 143, "terminated (SIGTERM)")):
    got, lines = _run_exit(main, monkeypatch, capsys)
    assert got == code and len(lines) == 1, (needle, lines)
    assert lines[0].startswith("stopped: ") and needle in lines[0]
    assert lines[0].endswith("rerun the same command to continue")
