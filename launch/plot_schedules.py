"""Schedule gallery: every registered schedule on one figure.

  python -m launch.plot_schedules [--out FILE] [--total-steps 1000]

The figure goes to `runs/schedules.png` (under `$TRAINLAB_RUNS_DIR` if set) unless `--out`
says otherwise, so a plain run never rewrites the tracked copy. To regenerate the committed
figure: `python -m launch.plot_schedules --out docs/schedules.png`.

Each schedule in `algorithms.schedules.SCHEDULES` is drawn with peak 1.0 over `total_steps`
updates (and a little past the end, to show the hold), using the example arguments below; a
schedule without an entry is drawn with its defaults, or reported if it needs arguments.
"""

from __future__ import annotations

import math
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import jax
import numpy as np

from launch import cli
from trainlab.algorithms import schedules
from trainlab.errors import UsageError

# Example arguments per registered name; fractions of total_steps are resolved at draw time.
EXAMPLES: dict[str, list[tuple[str, dict]]] = {
    "constant": [("warmup 5%", dict(warmup_steps=0.05))],
    "warmup_cosine": [("warmup 5%", dict(warmup_steps=0.05))],
    "wsd": [(f"{shape}, 20% decay", dict(warmup_steps=0.05, decay_fraction=0.2, decay_shape=shape))
            for shape in ("linear", "cosine", "1-sqrt", "square", "mirror-cosine", "exponential")],
    # a chosen so that the power law drops below the cap (max_value = peak) near step 200.
    "power": [("a=512, b=-0.51, batch 1, 1024 tokens/step, 10% decay",
               dict(a=512.0, b=-0.51, batch_size=1, tokens_per_step=1024, warmup_steps=0.05,
                    decay_steps=0.1))],
    "infinite_lr": [(f"{shape} cooldown", dict(constant_value=0.55, end_value=0.1,
                                               warmup_steps=0.02, cooldown_steps=0.4,
                                               anneal_steps=0.15, cooldown_shape=shape))
                    for shape in ("cosine", "inv-sqrt", "linear")],
    "repeated_cosine": [(f"4 cycles, re-warm from {start}",
                         dict(num_cycles=4, warmup_steps=0.02, end_value=0.1, rewarm_from=start))
                        for start in ("zero", "end")],
    "uba": [(f"phi={phi}", dict(phi=phi, warmup_steps=0.05)) for phi in (0.5, 1.0, 2.0, 5.0)],
    "step_decay": [("x0.1 at 50% and 75%", {})],
    "linear": [("warmup 5%", dict(warmup_steps=0.05))],
    "onecycle": [("pct_start 0.3, div 25, final div 1e4", {})],
}
_STEP_ARGS = ("warmup_steps", "decay_steps", "cooldown_steps", "anneal_steps")


def _resolve(kwargs: dict, total_steps: int) -> dict:
  """Step arguments given as fractions (floats < 1) become step counts."""
  return {k: round(v * total_steps) if k in _STEP_ARGS and isinstance(v, float) else v
          for k, v in kwargs.items()}


def plot_all(out: pathlib.Path, total_steps: int = 1000) -> list[str]:
  """Draws the gallery to `out`; returns the names that could not be drawn, with why."""
  names = sorted(schedules.SCHEDULES)
  columns = 3
  rows = math.ceil(len(names) / columns)
  fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.4 * rows), squeeze=False)
  steps = np.arange(0, int(total_steps * 1.1) + 1)
  skipped = []
  for ax, name in zip(axes.flat, names):
    ax.set_title(name)
    for label, kwargs in EXAMPLES.get(name, [("defaults", {})]):
      try:
        schedule = schedules.build_schedule(name, 1.0, total_steps, **_resolve(kwargs, total_steps))
        values = np.asarray(jax.jit(jax.vmap(schedule))(steps))
      except (TypeError, ValueError) as e:
        skipped.append(f"{name} ({label}): {e}")
        continue
      ax.plot(steps, values, label=label, lw=1.4, ls=("-", "--", ":", "-.")[len(ax.lines) % 4])
    ax.set_xlabel("step")
    ax.set_ylabel("lr / peak")
    ax.set_ylim(-0.03, 1.05)
    ax.grid(alpha=0.3)
    ax.axvline(total_steps, color="0.75", lw=0.8)
    ax.legend(fontsize=7, loc="best")
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  fig.suptitle(f"trainlab schedules: peak 1.0, total_steps {total_steps} (grey line), held after",
               fontsize=11)
  fig.tight_layout()
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return skipped


def parse(argv: list[str]) -> tuple[pathlib.Path, int]:
  """(out, total_steps) from the command line (argv[0] is the program)."""
  parser = cli.ArgumentParser(prog="python -m launch.plot_schedules",
                              description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=pathlib.Path, default=None,
                      help="where to write the PNG (default: runs/schedules.png; the committed "
                      "figure is docs/schedules.png)")
  parser.add_argument("--total-steps", type=int, default=1000)
  args = parser.parse_args(argv[1:])
  if args.total_steps < 1:
    raise UsageError(f"--total-steps {args.total_steps} must be >= 1")
  return args.out or cli.runs_root() / "schedules.png", args.total_steps


def main(argv: list[str]) -> int:
  out, total_steps = parse(argv)
  skipped = plot_all(out, total_steps)
  for line in skipped:
    print(f"not drawn: {line}", file=sys.stderr)
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  cli.run(main)
