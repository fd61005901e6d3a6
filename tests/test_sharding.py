"""Sharding: 8 virtual devices train like 1, and an 8-device checkpoint restores onto 4, 2, 1."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np

from experiments import lm
from trainlab.training.run import build_run
from trainlab.training.trainer import Trainer
from trainlab.training import checkpoint, loop

REPO = pathlib.Path(__file__).resolve().parent.parent
STEPS = 5

# Runs with 8 virtual CPU devices: trains on a data=2 x fsdp=4 mesh (parameters FSDP-sharded,
# batch and activations over both axes), then restores the final checkpoint onto 4 and 2 of
# the devices.
EIGHT_DEVICES = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from experiments import lm
    from trainlab.training import checkpoint, loop
    from trainlab.training.run import build_run
    from trainlab.training.trainer import Trainer
    workdir, steps = sys.argv[1], int(sys.argv[2])
    assert jax.device_count() == 8
    config = lm.get_config("size=test")
    config.total_steps, config.log.every_steps, config.eval.every_steps = steps, 1, 0
    config.mesh.data, config.mesh.fsdp = 2, 4
    loop.train(config, workdir, progress=False)
    trainer = Trainer(build_run(config))
    spec = trainer.state_sharding.params["embed"]["embedding"].spec
    tokens = trainer.step_batch(0)["inputs"]
    hidden = jax.jit(lambda p, t: trainer.run.model.apply({"params": p}, t, return_hidden=True))(
        trainer.init_state().params, tokens)
    written = checkpoint.Checkpoints(workdir, read_only=True).restore(steps, trainer.abstract_state)
    flat = {jax.tree_util.keystr(p): np.asarray(x) for p, x in
            jax.tree_util.tree_flatten_with_path(jax.device_get(written))[0]}
    np.savez(workdir + "/state.npz", **flat)
    counts = {}
    for n, fsdp in ((4, 4), (2, 2)):
      config.mesh.data, config.mesh.fsdp = -1, fsdp
      small = Trainer(build_run(config, jax.devices()[:n]))
      state = checkpoint.Checkpoints(workdir, read_only=True).restore(steps, small.abstract_state)
      leaves = jax.tree_util.tree_flatten_with_path(state)[0]
      for p, x in leaves:
        np.testing.assert_array_equal(np.asarray(x), flat[jax.tree_util.keystr(p)])
      counts[n] = sorted({len(x.sharding.device_set) for _, x in leaves})
    print(json.dumps({"embedding_spec": str(spec), "hidden_spec": str(hidden.sharding.spec),
                      "devices": counts}))
""")


def test_eight_devices_match_one_and_restore_onto_fewer(tmp_path):
  script = tmp_path / "eight.py"
  script.write_text(EIGHT_DEVICES)
  workdir = tmp_path / "eight"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
         "XLA_FLAGS": f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=8"}
  result = subprocess.run([sys.executable, str(script), str(workdir), str(STEPS)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["embedding_spec"] == "P(None, 'fsdp')"
  assert report["hidden_spec"] == "P(('data', 'fsdp'),)"  # activations split along the batch
  assert report["devices"] == {"4": [4], "2": [2]}

  config = lm.get_config("size=test")
  config.total_steps, config.log.every_steps, config.eval.every_steps = STEPS, 1, 0
  assert jax.device_count() == 1
  loop.train(config, tmp_path / "one", progress=False)
  losses = {}
  for name in ("eight", "one"):
    records = [json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    losses[name] = np.array([r["train_loss"] for r in records])
  assert len(losses["one"]) == STEPS
  np.testing.assert_allclose(losses["eight"], losses["one"], rtol=1e-5, atol=0)

  saved = np.load(workdir / "state.npz")
  state = checkpoint.Checkpoints(workdir, read_only=True).restore(
      STEPS, Trainer(build_run(config)).abstract_state)
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
  assert len(leaves) == len(saved.files)
  for path, leaf in leaves:
    np.testing.assert_array_equal(np.asarray(leaf), saved[jax.tree_util.keystr(path)])
