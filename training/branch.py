"""A WSD decay branched off a stable run (Hägele et al., arXiv 2405.18392, Sec. 3).

One long stable run, many cheap cooldowns: `branch_config` turns the stable run's
`config.json` into the config of a decay of `decay_steps` that starts from its full state
(parameters, optimizer state, step counter) at `at_step`, for the budget `at_step + decay_steps`.
"""

from __future__ import annotations

from typing import Any

import ml_collections

WSD_KEEP = ("warmup_steps", "decay_shape", "init_value", "end_value", "half_life")


def branch_config(source: dict[str, Any], run_dir: str, at_step: int,
                  decay_steps: int) -> ml_collections.ConfigDict:
  """`source` (a run's config.json) turned into the config of a WSD decay branch."""
  config = ml_collections.ConfigDict(source)
  old = dict(source.get("schedule", {}))
  schedule = {"name": "wsd", "decay_steps": decay_steps,
              "warmup_steps": old.get("warmup_steps", 0)}
  if old.get("name") == "wsd":
    schedule.update({k: old[k] for k in WSD_KEEP if k in old})
  config.schedule = ml_collections.ConfigDict(schedule)
  config.total_steps = at_step + decay_steps
  config.checkpoint.update(resume_from="", init_from="", branch_from=str(run_dir),
                           branch_step=at_step)
  return config
