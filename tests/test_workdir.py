"""A run folder: checked before anything is built, locked by one run at a time, never left empty.

The lock is tested with real processes: a holder script takes it and blocks on reading its
stdin (so the test knows exactly when it holds the lock and decides when it lets go).
"""

from __future__ import annotations

import errno
import os
import pathlib
import signal
import socket
import subprocess
import sys

import pytest

from launch import cli
from trainlab.errors import UsageError
from trainlab.training import loop, workdir

REPO = pathlib.Path(__file__).resolve().parent.parent
TEST = "experiments/lm.py:size=test"
HOLDER = ("import sys\n"
          "from trainlab.training import workdir\n"
          "with workdir.hold(sys.argv[1]):\n"
          "  print('locked', flush=True)\n"
          "  sys.stdin.read()\n")


@pytest.fixture(name="holder")
def holder_fixture(tmp_path):
  """A process holding the lock of `tmp_path / "run"` until its stdin closes."""
  path = tmp_path / "run"
  process = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], cwd=REPO,
                             env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
  assert process.stdout.readline().strip() == "locked"
  yield process, path
  if process.poll() is None:
    process.stdin.close()
    process.wait(timeout=1800)


def _listing(path: pathlib.Path) -> list[tuple[str, bytes]]:
  return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else b"")
                for p in path.rglob("*"))


def test_a_second_trainer_on_a_locked_workdir_exits_2_naming_the_holder(holder, run_module):
  process, path = holder
  before = _listing(path)
  result = run_module("launch.train", "--config", TEST, "--workdir", str(path))
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == 2, result.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith("error:"), lines
  assert f"pid {process.pid} on host {socket.gethostname()}" in lines[0]
  assert _listing(path) == before  # it touched nothing
  process.stdin.close()
  assert process.wait(timeout=1800) == 0
  assert (path / workdir.LOCK_FILE).read_text() == ""  # released cleanly: an empty record


def test_the_lock_excludes_this_process_too(holder):
  """A second holder in any process fails; the message is one line naming the holder."""
  process, path = holder
  with pytest.raises(UsageError, match=rf"in use by pid {process.pid} on host "):
    with workdir.hold(path):
      pass


def test_a_stale_lock_of_a_killed_run_is_taken_over(holder, capfd):
  process, path = holder
  process.send_signal(signal.SIGKILL)
  process.wait(timeout=1800)
  assert f"pid {process.pid}" in (path / workdir.LOCK_FILE).read_text()  # left behind
  with workdir.hold(path):
    assert f"pid {os.getpid()} " in (path / workdir.LOCK_FILE).read_text()
  assert f"left by pid {process.pid}" in capfd.readouterr().err


def test_the_stream_workdir_of_launch_continual_is_locked(holder):
  from experiments import continual as continual_configs
  from trainlab.training import continual
  process, path = holder
  config = continual_configs.get_config("schedule=infinite,steps=10")
  config.stream.domains = "stdlib-code,pydoc-english"
  with pytest.raises(UsageError, match=f"in use by pid {process.pid}"):
    continual.run_stream(config, path, progress=False)
  assert _listing(path) == [(workdir.LOCK_FILE, (path / workdir.LOCK_FILE).read_bytes())]


@pytest.mark.parametrize("make, message", [
    (lambda tmp: (tmp / "file").write_text("x") and tmp / "file", "is a file; pass a folder"),
    (lambda tmp: (tmp / "file").write_text("x") and tmp / "file" / "sub", "is a file, so no"),
])
def test_a_workdir_that_cannot_be_a_folder_is_a_usage_error(tmp_path, make, message):
  with pytest.raises(UsageError, match=message):
    workdir.check_usable(make(tmp_path))


def test_an_unwritable_workdir_is_a_usage_error(tmp_path, monkeypatch):
  """Tests run as root, who may write anywhere: os.access answers as for another user."""
  monkeypatch.setattr(workdir.os, "access", lambda path, mode: False)
  with pytest.raises(UsageError, match="is not writable by this user"):
    workdir.check_usable(tmp_path / "new" / "run")


def test_the_workdir_is_checked_before_anything_is_built(tmp_path, monkeypatch):
  def build(*args, **kwargs):
    raise AssertionError("built a run for an unusable workdir")
  monkeypatch.setattr(loop, "build_run", build)
  (tmp_path / "file").write_text("x")
  command = cli.parse(["launch.train", "--config", TEST, "--workdir",
                       str(tmp_path / "file" / "sub")], "lm.py")
  with pytest.raises(UsageError, match="is a file"):
    cli.run_training(loop.train, command, "train")


def test_a_workdir_that_is_a_file_exits_2_in_one_line(run_module, tmp_path):
  (tmp_path / "file").write_text("x")
  result = run_module("launch.train", "--config", TEST, "--workdir", str(tmp_path / "file"))
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == 2 and len(lines) == 1 and "is a file" in lines[0], result.stderr
  assert (tmp_path / "file").read_text() == "x"


def test_a_failed_start_leaves_no_empty_workdir(tmp_path, tiny_config):
  tiny_config.checkpoint.resume_from = str(tmp_path / "nowhere")
  with pytest.raises(UsageError, match="no checkpoints at"):
    loop.train(tiny_config, tmp_path / "new" / "run", progress=False)
  assert not (tmp_path / "new" / "run").exists()
  existing = tmp_path / "existing"
  existing.mkdir()
  with pytest.raises(UsageError, match="no checkpoints at"):
    loop.train(tiny_config, existing, progress=False)
  assert existing.is_dir()  # it was there before: never removed


def test_a_filesystem_without_locks_runs_with_a_warning(tmp_path, monkeypatch, capfd):
  def no_locks(handle, operation):
    raise OSError(errno.ENOLCK, "No locks available")
  monkeypatch.setattr(workdir.fcntl, "flock", no_locks)
  with workdir.hold(tmp_path / "run"):
    pass
  assert "cannot lock" in capfd.readouterr().err
