"""SIGTERM/SIGINT become a saved step and a clean stop, between steps, never mid-write.

A single process notes the signal itself; with several processes JAX's own preemption notifier
(started by `jax.distributed.initialize`) catches SIGTERM and all processes agree on one step
through `multihost_utils.reached_preemption_sync_point`. A signal noted too late for the loop to
act on (during its last step or final save) is delivered again once the watch ends, to whatever
handler was there before (the entry points' one-line stop), so it is never lost.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
from jax.experimental import multihost_utils


class Preempted(Exception):
  """SIGTERM or SIGINT arrived; the state at `step` was saved and the run stopped."""

  def __init__(self, step: int, signum: int):
    super().__init__(f"{signal.Signals(signum).name} after saving step {step}; rerun the same "
                     "command to continue")
    self.step, self.signum = step, signum


class PreemptionWatch:
  """Notes SIGTERM/SIGINT instead of dying, so the loop can save and stop between steps.

  With several processes JAX's own preemption notifier (started by
  `jax.distributed.initialize`) catches SIGTERM and all processes agree on one step through
  `multihost_utils.reached_preemption_sync_point`.
  """

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> "PreemptionWatch":
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._note)
    return self

  def _note(self, signum: int, frame: Any) -> None:
    del frame
    self.signum = signum

  def __exit__(self, exc_type: Any, *exc: Any) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    if self._previous and self.signum is not None and exc_type is None:
      signal.raise_signal(self.signum)  # noted after the last check: not lost

  def requested(self, step: int) -> bool:
    if jax.process_count() > 1 and multihost_utils.reached_preemption_sync_point(step):
      self.signum = signal.SIGTERM
    return self.signum is not None
