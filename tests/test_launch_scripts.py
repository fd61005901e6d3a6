"""TPU pod and SLURM launch scripts, run against stand-ins for `gcloud`, `srun` and `python`.

Each stand-in is a small shell script on PATH that logs its argv and answers with the next reply
queued for it (`CODE [STDOUT]`; none left: exit 97), so a test states exactly which commands run,
in which order, and what they answer. The TPU script runs from a copy in a fresh git repository,
so `setup` archives that repository, never this checkout.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import shutil
import subprocess
import tarfile

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
GCLOUD = ["gcloud", "compute", "tpus", "tpu-vm"]
WHERE = ["--zone=us-east5-a", "--project=proj"]
WORKDIR = "/gcs/bkt/run 1"
TRAIN_FLAGS = ["--workdir", WORKDIR, "--config", "experiments/lm.py:size=small"]
SUMMARY_TEST = ["test", "-f", f"{WORKDIR}/summary.json"]

FAKE = r"""#!/bin/sh
name=$(basename "$0")
{ printf '%s' "$name"; for a in "$@"; do printf '\037%s' "$a"; done; echo; } >> "$FAKES/calls.log"
pwd >> "$FAKES/$name.pwd"
queue="$FAKES/$name.queue"
if [ ! -s "$queue" ]; then echo "fake $name: no reply queued" >&2; exit 97; fi
line=$(head -n 1 "$queue"); sed -i 1d "$queue"
code=${line%% *}; out=${line#"$code"}; out=${out# }
[ -n "$out" ] && echo "$out"
exit "$code"
"""


class Fakes:
  """Stand-in commands on PATH, the calls they got, and the repository copy the scripts run in."""

  def __init__(self, root: pathlib.Path, names: tuple[str, ...]):
    self.root, self.dir, self.tmp = root, root / "fakes", root / "tmp"
    self.repo = root / "repo"
    for folder in (self.dir / "bin", self.tmp, self.repo / "launch"):
      folder.mkdir(parents=True)
    for name in names:
      path = self.dir / "bin" / name
      path.write_text(FAKE)
      path.chmod(0o755)
    for script in ("tpu_pod.sh", "slurm.sbatch"):
      shutil.copy(REPO / "launch" / script, self.repo / "launch" / script)
    (self.repo / "notes.txt").write_text("committed\n")
    self.git("init", "-q")
    self.git("add", ".")
    self.git("commit", "-q", "-m", "init")

  def git(self, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", "-C", str(self.repo), "-c", "user.name=t", "-c",
                           "user.email=t@t", *args], env=env, check=True, capture_output=True,
                          text=True, timeout=60).stdout

  def reply(self, name: str, *replies: int | str):
    with open(self.dir / f"{name}.queue", "a", encoding="utf-8") as f:
      f.writelines(f"{r}\n" for r in replies)

  def calls(self) -> list[list[str]]:
    log = self.dir / "calls.log"
    return [line.split("\x1f") for line in log.read_text().splitlines()] if log.exists() else []

  def left(self, name: str) -> int:
    """How many replies queued for `name` were never asked for."""
    queue = self.dir / f"{name}.queue"
    return len(queue.read_text().splitlines()) if queue.exists() else 0

  def run(self, script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("SLURM_", "TPU_", "ZONE", "PROJECT", "ACCELERATOR_TYPE",
                                  "TOPOLOGY", "CHECK", "BABYSIT_", "BUCKET", "SPOT", "PYTHON"))}
    env = {**clean, "PATH": f"{self.dir / 'bin'}:{os.environ['PATH']}", "FAKES": str(self.dir),
           "TMPDIR": str(self.tmp), "TPU_NAME": "pod1", "ZONE": "us-east5-a", "PROJECT": "proj",
           "BABYSIT_SLEEP": "0", **env}
    return subprocess.run(["bash", str(self.repo / "launch" / script), *args], cwd=self.root,
                          env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(name="fakes")
def fakes_fixture(tmp_path):
  return Fakes(tmp_path, ("gcloud", "srun", "python"))


@pytest.fixture(name="dry")
def dry_fixture(tmp_path):
  """Stand-ins that include `git`, for the tests where nothing at all may run."""
  return Fakes(tmp_path, ("gcloud", "srun", "python", "git"))


def _printed(result: subprocess.CompletedProcess) -> list[list[str]]:
  assert result.returncode == 0, result.stderr
  return [shlex.split(line) for line in result.stdout.splitlines() if not line.startswith("#")]


def _remote(ssh: list[str]) -> list[str]:
  return shlex.split(ssh[-1].removeprefix("--command="))


def _one_line_error(result: subprocess.CompletedProcess, code: int = 2) -> str:
  assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
  lines = result.stderr.splitlines()
  assert len(lines) == 1, result.stderr
  return lines[0]


def _last_line(result: subprocess.CompletedProcess, code: int) -> str:
  """The script's closing line; lines before it are progress notes."""
  assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
  return result.stderr.splitlines()[-1]


# --dry-run ------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["--dry-run", "create"],
    ["create", "--dry-run"],
    ["create", "--check", "--dry-run", "--", *TRAIN_FLAGS],
    ["check", "--", *TRAIN_FLAGS, "--dry-run"],
    ["setup", "--dry-run"],
    ["delete", "--dry-run"],
    ["run", "--", *TRAIN_FLAGS, "--dry-run"],
    ["babysit", "--dry-run", "--", *TRAIN_FLAGS],
    ["--check", "babysit", "--", "--dry-run", *TRAIN_FLAGS],
])
def test_tpu_dry_run_anywhere_runs_nothing(dry, args):
  printed = _printed(dry.run("tpu_pod.sh", *args, BUCKET="bkt"))
  assert dry.calls() == []
  assert printed and all(cmd[:4] == GCLOUD or cmd[0] in ("git", "cd") for cmd in printed)
  assert not any("--dry-run" in " ".join(cmd) for cmd in printed)


@pytest.mark.parametrize("args", [
    ["--dry-run", "--workdir", "X"],
    ["--workdir", "X", "--dry-run"],
    ["--workdir", "X", "--", "--flagfile=f", "--dry-run"],
])
def test_slurm_dry_run_anywhere_runs_nothing(dry, args):
  (line,) = _printed(dry.run("slurm.sbatch", *args))
  assert dry.calls() == []
  assert line[:6] == ["srun", "--kill-on-bad-exit=1", "--cpu-bind=none", "python", "-m",
                      "launch.train"]
  assert "--dry-run" not in line and "--workdir" in line


def test_tpu_create_and_delete(dry):
  assert _printed(dry.run("tpu_pod.sh", "--dry-run", "create", SPOT="1",
                          ACCELERATOR_TYPE="v5p-64")) == [
      GCLOUD + ["create", "pod1", *WHERE, "--accelerator-type=v5p-64",
                "--version=tpu-ubuntu2204-base", "--spot"]]
  assert _printed(dry.run("tpu_pod.sh", "delete", "--dry-run")) == [
      GCLOUD + ["delete", "pod1", *WHERE, "--quiet"]]


def test_tpu_setup_is_idempotent_and_installs_jax_for_tpu(dry):
  result = dry.run("tpu_pod.sh", "--dry-run", "setup", BUCKET="bkt")
  assert "committed code only (git archive HEAD)" in result.stdout
  archive, scp, ssh = _printed(result)
  assert archive == ["git", "-C", str(dry.repo), "archive", "--format=tar.gz", "-o",
                     f"{dry.tmp}/pod1-trainlab.tar.gz", "HEAD"]
  assert scp[:5] == GCLOUD + ["scp"] and scp[-1] == "--worker=all"
  assert ssh[:6] == GCLOUD + ["ssh", "pod1"] and "--worker=all" in ssh
  remote = ssh[-1].removeprefix("--command=")
  assert "[ -x ~/venv/bin/python ] || python3 -m venv ~/venv" in remote  # only once
  assert "pip install -q -e ~/trainlab 'jax[tpu]==0.10.2' -f " \
         "https://storage.googleapis.com/jax-releases/libtpu_releases.html" in remote
  assert "mountpoint -q /gcs/bkt || gcsfuse --implicit-dirs bkt /gcs/bkt" in remote


def test_tpu_run_starts_the_same_train_command_on_every_worker(dry):
  (ssh,) = _printed(dry.run("tpu_pod.sh", "run", "--", *TRAIN_FLAGS, "--dry-run"))
  assert ssh[:-1] == GCLOUD + ["ssh", "pod1", *WHERE, "--worker=all"]
  assert _remote(ssh) == ["cd", "~/trainlab", "&&", "TRAINLAB_TPU_POD=1", "~/venv/bin/python",
                          "-m", "launch.train", *TRAIN_FLAGS]


def test_tpu_babysit_dry_run_prints_one_pass(dry):
  commands = _printed(dry.run("tpu_pod.sh", "--dry-run", "babysit", "--", *TRAIN_FLAGS))
  verbs = [c[4] if c[:4] == GCLOUD else c[0] for c in commands]
  assert verbs == ["describe", "delete", "create", "git", "scp", "ssh", "ssh", "ssh"]
  check, run = commands[-2], commands[-1]
  assert "--worker=0" in check and _remote(check) == SUMMARY_TEST
  assert _remote(run)[-len(TRAIN_FLAGS):] == TRAIN_FLAGS


# Usage errors: one line, exit 2, nothing called ------------------------------------------------


@pytest.mark.parametrize("args, env, says", [
    (["create", "--dryrun"], {}, "unknown flag --dryrun"),
    (["--force", "create"], {}, "unknown flag --force"),
    (["create", "--workdir", "X"], {}, "unknown flag --workdir"),
    (["frobnicate"], {}, "unknown subcommand frobnicate"),
    ([], {}, "no subcommand"),
    (["create", "delete"], {}, "two subcommands"),
    (["setup", "--", "--config", "x"], {}, "setup takes no launch.train flags"),
    (["create", "--", "--config", "x"], {}, "only with --check"),
    (["run", "--check", "--", *TRAIN_FLAGS], {}, "--check applies to create and babysit"),
    (["check"], {}, "needs the launch.train flags"),
    (["create"], {"CHECK": "1"}, "needs the launch.train flags"),
    (["babysit", "--", "--config", "x"], {}, "--workdir"),
    (["create"], {"CHECK": "yes"}, "CHECK=yes"),
    (["babysit", "--", *TRAIN_FLAGS], {"BABYSIT_SLEEP": "1m"}, "BABYSIT_SLEEP=1m"),
    (["babysit", "--", *TRAIN_FLAGS], {"BABYSIT_MAX_SAME": "0"}, "BABYSIT_MAX_SAME=0"),
])
@pytest.mark.parametrize("dry_run", [False, True])
def test_tpu_usage_errors_exit_2_with_one_line_and_run_nothing(dry, args, env, says, dry_run):
  line = _one_line_error(dry.run("tpu_pod.sh", *(["--dry-run"] if dry_run else []), *args,
                                 **env))
  assert says in line
  assert dry.calls() == []


@pytest.mark.parametrize("args, says", [
    (["--dryrun", "--workdir", "X"], "unknown flag --dryrun"),
    (["--workdir", "X", "--nodes=2"], "unknown flag --nodes=2"),
    (["--config", "experiments/lm.py"], "--workdir"),
    (["--workdir"], "--workdir"),
])
def test_slurm_usage_errors_exit_2_with_one_line_and_run_nothing(dry, args, says):
  assert says in _one_line_error(dry.run("slurm.sbatch", *args))
  assert dry.calls() == []


def test_slurm_runs_one_train_process_per_gpu_through_srun(fakes):
  fakes.reply("srun", 143)
  result = fakes.run("slurm.sbatch", *TRAIN_FLAGS, "--config.total_steps=5", "--", "--flagfile=f")
  assert result.returncode == 143  # srun's status, the run's preemption exit, reaches SLURM
  assert fakes.calls() == [["srun", "--kill-on-bad-exit=1", "--cpu-bind=none", "python", "-m",
                            "launch.train", *TRAIN_FLAGS, "--config.total_steps=5",
                            "--flagfile=f"]]
  header = (REPO / "launch" / "slurm.sbatch").read_text()
  assert "#SBATCH --ntasks-per-node=8" in header and "#SBATCH --gpus-per-node=8" in header
  assert "#SBATCH --requeue" in header and "#SBATCH --signal=TERM@120" in header


# check: launch.compile for the slice's topology, before anything is created --------------------

# Default layouts of Cloud TPU slices, as MaxText's MaxText/accelerator_to_spec_map.py (commit
# 035dd3dc) lists them (it spells v5p's topology `v5:`; libtpu 0.0.42.1 takes `v5p:` alike: both
# gave 4 devices for 2x2x1 in get_topology_desc). v5litepod-N is gcloud's name for v5e-N.
TOPOLOGIES = {
    "v4-8": "v4:2x2x1", "v4-16": "v4:2x2x2", "v4-32": "v4:2x2x4", "v4-64": "v4:2x4x4",
    "v4-128": "v4:4x4x4", "v4-256": "v4:4x4x8", "v4-512": "v4:4x8x8", "v4-1024": "v4:8x8x8",
    "v4-2048": "v4:8x8x16", "v4-4096": "v4:8x16x16", "v5p-8": "v5p:2x2x1",
    "v5p-32": "v5p:2x2x4", "v5p-64": "v5p:2x4x4", "v5p-128": "v5p:4x4x4",
    "v5p-8192": "v5p:16x16x16", "v5litepod-16": "v5e:4x4", "v5e-32": "v5e:4x8",
    "v5litepod-64": "v5e:8x8", "v5litepod-128": "v5e:8x16", "v5litepod-256": "v5e:16x16",
    "v6e-1": "v6e:1x1", "v6e-4": "v6e:2x2", "v6e-8": "v6e:2x4", "v6e-16": "v6e:4x4",
    "v6e-32": "v6e:4x8", "v6e-64": "v6e:8x8", "v6e-256": "v6e:16x16",
}


@pytest.mark.parametrize("accelerator", TOPOLOGIES)
def test_check_derives_the_topology_from_the_accelerator_type(dry, accelerator):
  (command,) = _printed(dry.run("tpu_pod.sh", "--dry-run", "check", "--", "--config", "c.py",
                                ACCELERATOR_TYPE=accelerator))
  assert command[-2:] == ["--topology", TOPOLOGIES[accelerator]]


@pytest.mark.parametrize("accelerator", ["v4-384", "v5p-640", "v3-8", "v4-", "v4-7", "tpu7x-8"])
def test_check_without_a_default_topology_asks_for_topology(dry, accelerator):
  line = _one_line_error(dry.run("tpu_pod.sh", "--dry-run", "check", "--", "--config", "c.py",
                                 ACCELERATOR_TYPE=accelerator))
  assert "set TOPOLOGY" in line and accelerator in line
  assert _printed(dry.run("tpu_pod.sh", "--dry-run", "check", "--", "--config", "c.py",
                          ACCELERATOR_TYPE=accelerator, TOPOLOGY="v4:4x4x12"))[0][-1] == \
      "v4:4x4x12"


def test_check_compiles_the_train_flags_here_without_the_pods_workdir(fakes):
  fakes.reply("python", 0)
  result = fakes.run("tpu_pod.sh", "check", "--", *TRAIN_FLAGS, "--config.total_steps=5",
                     "--workdir=/gcs/elsewhere", ACCELERATOR_TYPE="v4-32", TOPOLOGY="v4:2x2x2")
  assert result.returncode == 0, result.stderr
  assert fakes.calls() == [["python", "-m", "launch.compile", "--config",
                            "experiments/lm.py:size=small", "--config.total_steps=5",
                            "--topology", "v4:2x2x2"]]  # TOPOLOGY wins over v4-32's 2x2x4
  assert (fakes.dir / "python.pwd").read_text().strip() == str(fakes.repo)


@pytest.mark.parametrize("how", [{"args": ["--check"]}, {"env": {"CHECK": "1"}}])
def test_create_with_the_check_refuses_a_config_that_does_not_fit(fakes, how):
  fakes.reply("python", 2)
  fakes.reply("gcloud", 0)
  line = _last_line(fakes.run("tpu_pod.sh", "create", *how.get("args", []), "--", "--config",
                              "c.py", ACCELERATOR_TYPE="v5litepod-16", **how.get("env", {})), 2)
  assert "does not fit v5e:4x4" in line and "nothing created" in line
  assert fakes.calls() == [["python", "-m", "launch.compile", "--config", "c.py", "--topology",
                            "v5e:4x4"]]


def test_create_with_the_check_creates_a_config_that_fits(fakes):
  fakes.reply("python", 0)
  fakes.reply("gcloud", 0)
  result = fakes.run("tpu_pod.sh", "create", "--check", "--", "--config", "c.py")
  assert result.returncode == 0, result.stderr
  assert fakes.calls() == [
      ["python", "-m", "launch.compile", "--config", "c.py", "--topology", "v4:2x2x4"],
      GCLOUD + ["create", "pod1", *WHERE, "--accelerator-type=v4-32",
                "--version=tpu-ubuntu2204-base"]]


def test_create_runs_no_check_unless_asked(fakes):
  fakes.reply("gcloud", 0)
  assert fakes.run("tpu_pod.sh", "create").returncode == 0
  assert [c[0] for c in fakes.calls()] == ["gcloud"]


# setup: committed code only ---------------------------------------------------------------------


def _setup(fakes: Fakes) -> subprocess.CompletedProcess:
  fakes.reply("gcloud", 0, 0)  # scp, ssh
  result = fakes.run("tpu_pod.sh", "setup")
  assert result.returncode == 0, result.stderr
  assert [c[4] for c in fakes.calls()] == ["scp", "ssh"]
  return result


def _shipped(fakes: Fakes) -> dict[str, bytes]:
  with tarfile.open(fakes.tmp / "pod1-trainlab.tar.gz") as tar:
    return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_setup_ships_head_and_warns_about_uncommitted_changes(fakes):
  (fakes.repo / "notes.txt").write_text("edited, not committed\n")
  (fakes.repo / "new_module.py").write_text("x = 1\n")
  stderr = _setup(fakes).stderr.splitlines()
  head = fakes.git("rev-parse", "--short", "HEAD").strip()
  assert any(f"shipping commit {head} (git archive HEAD: committed files only)" in line
             for line in stderr)
  (warning,) = [line for line in stderr if "warning" in line]
  assert "2 uncommitted changes" in warning and "will NOT be shipped" in warning
  shipped = _shipped(fakes)
  assert shipped["notes.txt"] == b"committed\n" and "new_module.py" not in shipped


def test_setup_stops_at_the_first_failed_step(fakes):
  fakes.reply("gcloud", 1, 0)
  assert fakes.run("tpu_pod.sh", "setup").returncode == 1
  assert [c[4] for c in fakes.calls()] == ["scp"]


def test_setup_outside_a_git_checkout_is_a_usage_error(fakes):
  shutil.rmtree(fakes.repo / ".git")
  assert "not a git checkout" in _one_line_error(fakes.run("tpu_pod.sh", "setup"))
  assert fakes.calls() == []


def test_setup_of_a_clean_tree_does_not_warn(fakes):
  stderr = _setup(fakes).stderr
  assert "committed files only" in stderr and "warning" not in stderr
  assert _shipped(fakes)["notes.txt"] == b"committed\n"


# babysit ----------------------------------------------------------------------------------------


def _verbs(fakes: Fakes) -> list[str]:
  """One word per call: gcloud's verb; `test`/`run` for the summary check and the training run."""
  verbs = []
  for call in fakes.calls():
    verb = call[4] if call[:4] == GCLOUD else call[0]
    if verb == "ssh" and _remote(call) == SUMMARY_TEST:
      verb = "test"
    elif verb == "ssh" and "launch.train" in call[-1]:
      verb = "run"
    verbs.append(verb)
  return verbs


def _babysit(fakes: Fakes, *replies: int | str, **env: str) -> subprocess.CompletedProcess:
  fakes.reply("gcloud", *replies)
  return fakes.run("tpu_pod.sh", "babysit", "--", *TRAIN_FLAGS, **env)


def test_babysit_recreates_a_preempted_slice_and_reruns(fakes):
  result = _babysit(fakes, "0 READY", 1, 143,                # test: no summary; run: SIGTERM
                    "0 PREEMPTED", 0, 0, 0, 0, 1, 0, 0)      # delete create scp ssh test run test
  assert result.returncode == 0, result.stderr
  assert _verbs(fakes) == ["describe", "test", "run", "describe", "delete", "create", "scp", "ssh",
                           "test", "run", "test"]
  assert "PREEMPTED" in result.stderr and "summary.json exists; done" in result.stderr
  assert (fakes.tmp / "pod1-trainlab.tar.gz").exists()


def test_babysit_creates_a_missing_slice_and_retries_a_failed_create(fakes):
  result = _babysit(fakes, 1, 1,                  # describe: not found; create: no capacity
                    1, 0, 0, 0, 1, 0, 0)          # describe create scp ssh test run test
  assert result.returncode == 0, result.stderr
  assert _verbs(fakes) == ["describe", "create", "describe", "create", "scp", "ssh", "test", "run",
                           "test"]


def test_babysit_keeps_retrying_lost_ssh_and_saved_signals(fakes):
  replies = []
  for code in (255, 255, 143, 143, 130, 130):
    replies += ["0 READY", 1, code]
  result = _babysit(fakes, *replies, "0 READY", 1, 0, 0)
  assert result.returncode == 0, result.stderr
  assert _verbs(fakes).count("run") == 7 and "create" not in _verbs(fakes)


def test_babysit_is_done_when_the_summary_exists(fakes):
  assert _babysit(fakes, "0 READY", 0).returncode == 0
  assert _verbs(fakes) == ["describe", "test"]


def test_babysit_gives_up_at_once_on_bad_input(fakes):
  line = _babysit(fakes, "0 READY", 1, 2, "0 READY", 1, 0, 0).stderr.splitlines()[-1]
  assert "giving up" in line and "exited with 2" in line
  assert _verbs(fakes) == ["describe", "test", "run"]
  assert fakes.left("gcloud") == 4


@pytest.mark.parametrize("codes, max_same, runs, exit_code", [
    ((1, 1), None, 2, 1),              # the same exit 1 twice (default BABYSIT_MAX_SAME=2)
    ((137, 137), None, 2, 137),
    ((1, 1, 1), "3", 3, 1),
    ((1, 3, 1, 3), "2", 4, None),      # alternating codes are not "the same in a row"
    ((1, 255, 1), "2", 3, None),       # a lost ssh in between resets the count
])
def test_babysit_gives_up_after_the_same_failure_in_a_row(fakes, codes, max_same, runs,
                                                          exit_code):
  replies = []
  for code in codes:
    replies += ["0 READY", 1, code]
  env = {"BABYSIT_MAX_SAME": max_same} if max_same else {}
  result = _babysit(fakes, *replies, "0 READY", 1, 0, 0, **env)
  assert _verbs(fakes).count("run") == runs + (exit_code is None)
  if exit_code is None:
    assert result.returncode == 0, result.stderr
  else:
    line = result.stderr.splitlines()[-1]
    assert result.returncode == exit_code and "giving up" in line
    assert f"exited with {exit_code}, {runs} times in a row" in line


def test_babysit_gives_up_after_the_same_setup_failure_in_a_row(fakes):
  result = _babysit(fakes, "0 PREEMPTED", 0, 0, 1,      # delete create scp(fails: no ssh)
                    "0 READY", 0, 1,                    # scp ssh(the install fails)
                    "0 READY", 1, 0, 0)
  assert result.returncode == 1 and "setup exited with 1, 2 times in a row" in result.stderr
  assert _verbs(fakes) == ["describe", "delete", "create", "scp", "describe", "scp", "ssh",
                           "describe"]


def test_babysit_stops_when_the_run_exits_0_without_a_summary(fakes):
  line = _babysit(fakes, "0 READY", 1, 0, 1, "0 READY", 1, 0, 0).stderr.splitlines()[-1]
  assert "exited 0 but" in line and "summary.json does not exist" in line
  assert _verbs(fakes) == ["describe", "test", "run", "test"]


def test_babysit_with_the_check_creates_nothing_when_the_config_does_not_fit(fakes):
  fakes.reply("python", 2)
  fakes.reply("gcloud", "0 READY", 0)
  result = fakes.run("tpu_pod.sh", "babysit", "--check", "--", *TRAIN_FLAGS)
  assert "does not fit" in _last_line(result, 2)
  assert fakes.calls() == [["python", "-m", "launch.compile", "--config",
                            "experiments/lm.py:size=small", "--topology", "v4:2x2x4"]]
