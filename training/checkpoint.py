"""Orbax checkpoints of the train state: sharded async saves, verified restores, reshard.

One `orbax.checkpoint.CheckpointManager` per run folder (`workdir/checkpoints`). A checkpoint
has two items: `state`, the whole `TrainState` written shard by shard by every process (no
gather to one host), and `meta`, JSON with the resolved config, `format_version`, the git
commit and library versions. Restores read into an abstract state whose leaves carry the
*current* shardings, so a checkpoint written on one mesh loads onto any other.

Orbax writes each step into a temporary folder and renames it when complete, so a run killed
mid-save leaves no step behind. Orbax checks no data it reads back (64 flipped bytes in a data
file restore silently), so every step also carries `checksums.json`: the size and SHA-256 of
each file of its items, computed by process 0 in Orbax's background thread after every
process has written its shards and before the folder is renamed (a finalized step always has
them). A restore first checks them, each process a share of the files. A finalized step that
fails either check or fails to read (a flipped, truncated or missing file) is moved to
`workdir/checkpoints_corrupt/` with a one-line report and the previous step is used; it is
never deleted. A checkpoint whose tree or shapes differ from the model and optimizer raises
`UsageError` naming the first mismatch.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import pathlib
import re
import shutil
import subprocess
import sys
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from trainlab.errors import UsageError

FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints_corrupt"
CHECKSUMS_FILE = "checksums.json"
_LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def checkpoint_dir(run_dir: str | pathlib.Path) -> pathlib.Path:
  """`RUN/checkpoints` for a run folder; a path that already is a checkpoints folder stays."""
  path = pathlib.Path(run_dir)
  return path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path


def run_metadata(config: Any) -> dict[str, Any]:
  """What a checkpoint records about the code and config that wrote it."""
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=pathlib.Path(__file__).parent, timeout=10,
                            check=False).stdout.strip()
  except (OSError, subprocess.TimeoutExpired):
    commit = ""
  versions = {}
  for name in _LIBRARIES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return {"format_version": FORMAT_VERSION, "git_commit": commit or None,
          "libraries": versions, "python": sys.version.split()[0],
          "config": config.to_dict() if hasattr(config, "to_dict") else dict(config)}


def _shape_tree(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): (tuple(leaf.shape), np.dtype(leaf.dtype).name)
          for path, leaf in leaves}


def _saved_keys(tree: Any) -> Any:
  """The saved tree's leaf paths, in the same key spelling as an abstract `TrainState`."""
  return {jax.tree_util.keystr(p): v for p, v in
          jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]}


def check_compatible(saved_metadata: Any, abstract: Any, where: str) -> None:
  """Raises `UsageError` naming the first leaf whose presence or shape differs."""
  want = _shape_tree(abstract)
  have = {k: (tuple(v.shape), np.dtype(v.dtype).name)
          for k, v in _saved_keys(_as_plain(saved_metadata)).items()}
  # Orbax stores NamedTuples and dataclasses as dicts and tuples as lists: compare leaf names.
  norm = lambda key: key.replace("'", "").replace("[", ".").replace("]", "").replace("..", ".")
  want_n, have_n = {norm(k): v for k, v in want.items()}, {norm(k): v for k, v in have.items()}
  missing, extra = sorted(set(want_n) - set(have_n)), sorted(set(have_n) - set(want_n))
  if missing or extra:
    detail = (f"the model/optimizer has {missing[0]} which the checkpoint lacks" if missing else
              f"the checkpoint has {extra[0]} which the model/optimizer lacks")
    raise UsageError(f"checkpoint {where} does not match this config: {detail} "
                     f"({len(missing)} missing, {len(extra)} unexpected leaves); use the config "
                     "that wrote it or a different workdir")
  for key, (shape, _) in want_n.items():
    if have_n[key][0] != shape:
      raise UsageError(f"checkpoint {where} does not match this config: {key} has shape "
                       f"{have_n[key][0]} in the checkpoint but {shape} here; use the config "
                       "that wrote it or a different workdir")


def _as_plain(tree: Any) -> Any:
  """Orbax tree metadata as nested dicts/lists of leaves with `.shape` and `.dtype`."""
  if hasattr(tree, "tree"):
    tree = tree.tree
  return tree


def _is_main() -> bool:
  return jax.process_index() == 0


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


class CorruptCheckpoint(Exception):
  """A step's files differ from the checksums recorded when it was saved."""


def _sha256(path: pathlib.Path) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def write_checksums(step_dir: pathlib.Path) -> None:
  """Records size and SHA-256 of every file of the step's items in `step_dir/checksums.json`.

  Only files inside item folders: Orbax rewrites its own top-level files after this runs.
  """
  files = {str(p.relative_to(step_dir)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
           for item in sorted(step_dir.iterdir()) if item.is_dir()
           for p in sorted(item.rglob("*")) if p.is_file()}
  tmp = step_dir / (CHECKSUMS_FILE + ".tmp")
  tmp.write_text(json.dumps({"format": 1, "files": files}, indent=1, sort_keys=True) + "\n")
  tmp.replace(step_dir / CHECKSUMS_FILE)


def _mismatch(step_dir: pathlib.Path, name: str, want: dict[str, Any]) -> str:
  """Why file `name` differs from its record, or ""."""
  path = step_dir / name
  if not path.is_file():
    return f"{name} is missing"
  if path.stat().st_size != want["bytes"]:
    return f"{name} has {path.stat().st_size} bytes, {want['bytes']} when saved"
  if _sha256(path) != want["sha256"]:
    return f"{name} does not match the SHA-256 recorded when it was saved"
  return ""


def verify_checksums(step_dir: pathlib.Path) -> bool:
  """Raises `CorruptCheckpoint` unless every file matches `checksums.json`; False if the step
  has none (saved before checksums existed). With several processes each checks a share of
  the files and all raise the same error (the first bad file's), or none does."""
  record_path = step_dir / CHECKSUMS_FILE
  if not record_path.is_file():
    return False
  try:
    files = json.loads(record_path.read_text())["files"]
  except (ValueError, KeyError, TypeError):
    raise CorruptCheckpoint(f"its {CHECKSUMS_FILE} is unreadable") from None
  names = sorted(files)
  count, index = jax.process_count(), jax.process_index()
  first_bad = next((i for i in range(index, len(names), count)
                    if _mismatch(step_dir, names[i], files[names[i]])), len(names))
  if count > 1:
    first_bad = int(np.min(multihost_utils.process_allgather(np.int32(first_bad))))
  if first_bad < len(names):
    name = names[first_bad]
    raise CorruptCheckpoint(_mismatch(step_dir, name, files[name]) or
                            f"{name} differs from its checksum on another process")
  return True


def _kind(error: Exception) -> str:
  return "corrupt" if isinstance(error, CorruptCheckpoint) else "unreadable"


def _reason(error: Exception) -> str:
  """A short, clean description of why a step could not be read (no object reprs)."""
  if isinstance(error, CorruptCheckpoint):
    return str(error)
  text = str(error).split("See full TensorStore details")[0]
  text = " ".join(re.sub(r"<[^<>]*>", "", text).split()).rstrip(" .:;")
  return f"{type(error).__name__}: {text[:160]}" if text else type(error).__name__


class Checkpoints:
  """The checkpoints of one run folder.

  `should_save(step)` is true at multiples of `every_steps` or of `keep_every` (the loop also
  saves at the end and on preemption); the last `keep` steps and every multiple of
  `keep_every` survive pruning. `read_only=True` opens another run's checkpoints to branch or
  resume from without ever writing or pruning there. `checksums=False` neither writes nor
  checks checksums (only for `benchmarks/checkpoint.py` to measure what they cost).
  """

  def __init__(self, run_dir: str | pathlib.Path, *, every_steps: int = 0, keep: int = 2,
               keep_every: int = 0, read_only: bool = False, checksums: bool = True):
    run_dir = pathlib.Path(run_dir).resolve()  # Orbax refuses relative paths
    self.directory = checkpoint_dir(run_dir) if read_only else run_dir / CHECKPOINT_DIR
    self.every_steps, self.keep_every, self._read_only = every_steps, keep_every, read_only
    self._checksums, self._saving_step = checksums, -1
    policies = [pp.LatestN(max(keep, 1))]
    if keep_every:
      policies.append(pp.EveryNSteps(keep_every))
    if read_only and not self.directory.is_dir():
      raise UsageError(f"no checkpoints at {self.directory}; pass a run folder that has a "
                       f"{CHECKPOINT_DIR}/ subfolder")
    absl_logger = logging.getLogger("absl")  # Orbax warns that read-only means read-only
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR if read_only else level)
    try:
      callback = self._write_checksums if checksums and not read_only else None
      options = ocp.CheckpointManagerOptions(
          preservation_policy=None if read_only else pp.AnyPreservationPolicy(policies),
          create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only,
          async_options=ocp.AsyncOptions(post_finalization_callback=callback))
      self._manager = ocp.CheckpointManager(
          self.directory, options=options, item_names=("state", "meta"),
          item_handlers={"state": ocp.StandardCheckpointHandler(),
                         "meta": ocp.JsonCheckpointHandler()})
    finally:
      absl_logger.setLevel(level)

  def _write_checksums(self) -> None:
    """Orbax's post-finalization callback: process 0, all shards written, not yet renamed."""
    step = self._saving_step
    pending = sorted(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"))
    write_checksums(pending[-1] if pending else self.directory / str(step))

  def steps(self) -> list[int]:
    """Finalized steps, oldest first."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    return any(n and step % n == 0 for n in (self.every_steps, self.keep_every))

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> bool:
    """Starts an async save of `state` at `step`; an existing step is left untouched."""
    if step in self._manager.all_steps():
      return False
    self._manager.wait_until_finished()  # the callback names the step being saved
    self._saving_step = step
    return self._manager.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def saving(self) -> bool:
    """Whether an async save is still being written."""
    return self._manager.is_saving_in_progress()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def meta(self, step: int) -> dict[str, Any]:
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, abstract_state: Any) -> Any:
    """The state saved at `step`, laid out as `abstract_state`'s shardings say.

    Raises `UsageError` if the saved tree does not match, `CorruptCheckpoint` if its files
    differ from their checksums; any other failure propagates.
    """
    self._verify(step)
    metadata = self._manager.item_metadata(step)["state"]
    if metadata is None:
      raise FileNotFoundError(f"step {step} has no readable 'state' item")
    check_compatible(metadata, abstract_state, f"{self.directory / str(step)}")
    return self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))["state"]

  def restore_params(self, step: int, abstract_params: Any) -> Any:
    """Only the parameters saved at `step` (for `init_from`); the rest is not read."""
    self._verify(step)
    metadata = self._manager.item_metadata(step)["state"]
    if metadata is None:
      raise FileNotFoundError(f"step {step} has no readable 'state' item")
    saved = _as_plain(metadata)
    saved_params = saved["params"] if isinstance(saved, dict) else saved.params
    check_compatible(saved_params, abstract_params, f"{self.directory / str(step)} (params)")
    target = {"params": abstract_params}
    with ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
        item_names=("state",), item_handlers={"state": ocp.PyTreeCheckpointHandler()}) as reader:
      restored = reader.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True)))["state"]
    return restored["params"]

  def _verify(self, step: int) -> None:
    if self._checksums and not verify_checksums(self.directory / str(step)) and _is_main():
      print(f"warning: checkpoint {self.directory / str(step)} has no {CHECKSUMS_FILE} (saved "
            "before checkpoints carried checksums); restoring it unverified", file=sys.stderr)

  def restore_latest(self, abstract_state: Any, *, at_step: int | None = None) -> Any | None:
    """The newest readable state (or the one at `at_step`); `None` if there is none.

    A finalized step that fails its checksums or fails to read is reported in one line and
    moved aside (never when `at_step` names it: that is the user's explicit choice and is a
    `UsageError` instead).
    """
    steps = self.steps()
    if at_step is not None:
      if at_step not in steps:
        raise UsageError(f"no checkpoint at step {at_step} in {self.directory} (it has "
                         f"{steps or 'none'}); pick one of those steps")
      try:
        return self.restore(at_step, abstract_state)
      except UsageError:
        raise
      except Exception as e:  # noqa: BLE001
        raise UsageError(f"checkpoint {self.directory / str(at_step)} is {_kind(e)} "
                         f"({_reason(e)}); pick another step") from None
    for i in reversed(range(len(steps))):
      try:
        return self.restore(steps[i], abstract_state)
      except UsageError:
        raise
      except Exception as e:  # noqa: BLE001  (any unreadable step is set aside)
        self._move_aside(steps[i], e, steps[i - 1] if i else None)
    return None

  def _move_aside(self, step: int, error: Exception, previous: int | None) -> None:
    kind = _kind(error)
    then = f"using step {previous} instead" if previous is not None else \
        "no earlier checkpoint is left to fall back to"
    if self._read_only:
      if _is_main():
        print(f"warning: checkpoint {self.directory / str(step)} is {kind} ({_reason(error)}); "
              f"{then}", file=sys.stderr)
      return
    target = self.directory.parent / CORRUPT_DIR / f"{step}-{int(time.time())}"
    if _is_main():
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.move(str(self.directory / str(step)), str(target))
      print(f"warning: checkpoint step {step} is {kind} ({_reason(error)}); moved it to "
            f"{target}; {then}", file=sys.stderr)
    _sync(f"moved_aside_{step}")
    self._manager.reload()
