"""A run folder is owned by one run at a time: checked, created, locked, and never left empty.

`check_usable(path)` raises `UsageError` for a path that cannot be a run folder (a file, a
folder under a file, a folder this user cannot write), before anything is built. `hold(path)`
creates the folder, takes an OS-level lock on `path/lock` (`fcntl.flock`, held for the life of
the run, released by the kernel if the process dies) and writes the holder's PID and host into
it. A second run on a locked folder gets a `UsageError` naming that PID and host, before it
touches any other file. A lock file whose lock is free was left by a dead process (a stale
lock): it is taken over. With several processes only process 0 locks, and every process gets
its verdict, so a second multi-process job fails cleanly on all of them. If the run fails
before it wrote anything into a folder `hold` created, the folder is removed again.

flock works on local disks and on NFSv4 (Linux emulates it with byte-range locks there); on
other network filesystems it may lock only within one host, and where it is not supported at
all (some FUSE mounts) the run goes ahead with a one-line warning.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import pathlib
import shutil
import socket
import sys
from typing import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from trainlab.errors import UsageError

LOCK_FILE = "lock"
_MESSAGE_BYTES = 512  # the verdict broadcast from process 0


def check_usable(path: str | pathlib.Path) -> None:
  """Raises `UsageError` if `path` cannot become (or be) a writable run folder."""
  path = pathlib.Path(path).absolute()
  if path.exists() and not path.is_dir():
    raise UsageError(f"--workdir {path} is a file; pass a folder (new or existing)")
  existing = path
  while not existing.exists():
    existing = existing.parent
  if not existing.is_dir():
    raise UsageError(f"--workdir {path}: {existing} is a file, so no folder can be made "
                     "under it; pass another --workdir")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise UsageError(f"--workdir {path}: {existing} is not writable by this user; pass a "
                     "folder you can write")


def _holder(handle) -> str:
  handle.seek(0)
  return handle.read().strip() or "another process (it has not written its PID yet)"


def _try_lock(path: pathlib.Path):
  """(the open lock file, "") if this process now holds the lock, else (None, why)."""
  handle = open(path / LOCK_FILE, "a+", encoding="utf-8")  # never truncates another's record
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = _holder(handle)
    handle.close()
    return None, (f"{path} is in use by {holder}; wait for that run to finish (or stop it), "
                  "or pass another --workdir")
  except OSError as e:  # a filesystem without locks (some FUSE mounts): run, but say so
    print(f"warning: cannot lock {path / LOCK_FILE} ({e.strerror}); make sure no other run "
          "uses this workdir", file=sys.stderr)
  handle.seek(0)
  stale = handle.read().strip()  # a clean exit empties the record: this one's holder died
  if stale:
    print(f"note: {path / LOCK_FILE} was left by {stale}, which is no longer running; "
          "taking it over", file=sys.stderr)
  handle.seek(0)
  handle.truncate()
  started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
  handle.write(f"pid {os.getpid()} on host {socket.gethostname()} (since {started})\n")
  handle.flush()
  return handle, ""


def _verdict(message: str) -> str:
  """Process 0's `message` on every process ("" when it holds the lock)."""
  if jax.process_count() == 1:
    return message
  data = np.zeros(_MESSAGE_BYTES, np.uint8)
  encoded = message.encode()[:_MESSAGE_BYTES]
  data[:len(encoded)] = np.frombuffer(encoded, np.uint8)
  data = np.asarray(multihost_utils.broadcast_one_to_all(data))
  return bytes(data).rstrip(b"\0").decode(errors="replace")


def _only_lock_inside(path: pathlib.Path) -> bool:
  return all(p.name == LOCK_FILE and p.parent == path if p.is_file() else p.is_dir()
             for p in path.rglob("*"))


@contextlib.contextmanager
def hold(path: str | pathlib.Path) -> Iterator[pathlib.Path]:
  """Creates and locks the run folder `path` for the duration of the `with` block."""
  path = pathlib.Path(path)
  check_usable(path)
  is_main = jax.process_index() == 0
  handle, message, created = None, "", False
  if is_main:
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    handle, message = _try_lock(path)
  message = _verdict(message)
  if message:
    raise UsageError(message if is_main or jax.process_count() == 1 else
                     f"process 0 could not lock the workdir: {message}")
  try:
    yield path
  except BaseException:
    if created and _only_lock_inside(path):  # nothing written: leave no empty folder behind
      shutil.rmtree(path, ignore_errors=True)
    raise
  finally:
    if handle is not None:
      handle.seek(0)
      handle.truncate()  # a free lock with an empty record; the file itself stays
      handle.close()  # releases the flock
