"""ECO in the trainer (Nikdan et al., arXiv 2601.22101): the train state stores the weight
matrices quantized (codes + scales, no float32 copy), the forward pass dequantizes them, the
state checkpoints bit-exactly; the master-weights baseline runs its forward on a quantized copy.

Expected byte counts come from the format arithmetic written out here (1 byte per FP8 code,
half a byte per INT4 code, one float32 scale per row, float32 m and v), the master-weights loss
from an ml_dtypes FP8 rounding of the weights.
"""

from __future__ import annotations

import math

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest

from trainlab.algorithms import quantize as qz
from trainlab.errors import UsageError
from experiments import lm
from trainlab.training.run import build_run
from trainlab.training.trainer import Trainer

is_q = lambda x: isinstance(x, qz.QuantizedArray)
SCALARS_BYTES = 256  # step, rng key, counts, injected hyperparameters


def _trainer(opt: str, **optimizer) -> Trainer:
  config = lm.get_config(f"size=test,opt={opt}")
  config.total_steps = 12
  config.optimizer.update(optimizer)
  return Trainer(build_run(config))


def _train(trainer: Trainer, steps: int):
  state, losses = trainer.init_state(), []
  for step in range(steps):
    state, metrics = trainer.train_step(state, trainer.step_batch(step))
    losses.append(float(metrics["train_loss"]))
  return state, losses


def _param_shapes(trainer: Trainer) -> list[tuple[int, ...]]:
  return [p.shape for p in jax.tree.leaves(trainer.abstract_state.params, is_leaf=is_q)]


def test_eco_adamw_fp8_trains_with_a_quantized_state_and_saves_bit_exactly(tmp_path):
  trainer = _trainer("eco_adamw", quantizer="fp8_e4m3")
  state, losses = _train(trainer, 12)
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.2, losses
  assert trainer.train_step._cache_size() == 1

  params = jax.tree.leaves(state.params, is_leaf=is_q)
  matrices = [p for p in params if is_q(p)]
  assert len(matrices) == sum(len(s) >= 2 for s in _param_shapes(trainer)) > 0
  for p in matrices:
    assert p.code_values.dtype == ml_dtypes.float8_e4m3fn and p.codes.shape == p.shape
    assert p.codes.dtype.itemsize == 1 and p.scales.dtype.itemsize == 4  # 1 byte per code
    assert p.scale_values.dtype == np.float32 and p.scales.shape == p.shape[:-1] + (1,)
  assert all(p.dtype == np.float32 and p.ndim < 2 for p in params if not is_q(p))
  # No float32 copy of a weight matrix: exactly m and v per matrix have its shape.
  matrix_shaped = [x for x in jax.tree.leaves(state.opt_state)
                   if x.dtype == np.float32 and x.ndim >= 2]
  assert len(matrix_shaped) == 2 * len(matrices)

  expected = sum(math.prod(s) * (1 + 8) + 4 * math.prod(s[:-1]) if len(s) >= 2
                 else math.prod(s) * (4 + 8) for s in _param_shapes(trainer))
  assert 0 <= qz.tree_nbytes(state) - expected < SCALARS_BYTES

  path = tmp_path / "ckpt"
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, state)
  checkpointer.wait_until_finished()
  restored = checkpointer.restore(path, trainer.abstract_state)
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.asarray(a).reshape(-1).view(np.uint8).tobytes() == \
        np.asarray(b).reshape(-1).view(np.uint8).tobytes()


def test_eco_sgdm_int4_packs_two_codes_per_byte():
  trainer = _trainer("eco_sgdm", quantizer="int4", rounding="nearest", learning_rate=0.3)
  state, losses = _train(trainer, 3)
  assert np.all(np.isfinite(losses))
  for p in jax.tree.leaves(state.params, is_leaf=is_q):
    if is_q(p):
      assert p.codes.dtype == np.uint8 and p.codes.shape == p.shape[:-1] + (
          (p.shape[-1] + 1) // 2,)
  expected = sum(math.ceil(s[-1] / 2) * math.prod(s[:-1]) + 4 * math.prod(s[:-1])
                 + 4 * math.prod(s) if len(s) >= 2 else 8 * math.prod(s)
                 for s in _param_shapes(trainer))  # codes + scales + m; vectors: p + m
  assert 0 <= qz.tree_nbytes(state) - expected < SCALARS_BYTES


def _fp8_roundtrip(w: np.ndarray) -> np.ndarray:
  scale = np.max(np.abs(w), axis=-1, keepdims=True) / 448.0
  scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
  return (w / scale).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * scale


def test_master_weights_forward_runs_on_an_fp8_copy_and_state_stays_float32():
  trainer = _trainer("adamw_master", master_weights_quantizer="fp8_e4m3")
  state = trainer.init_state()
  params = jax.device_get(state.params)
  batch = trainer.step_batch(0)
  new_state, metrics = trainer.train_step(state, batch)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(new_state.params))

  def loss_on(weights):
    logits = np.asarray(trainer.run.model.apply({"params": weights}, batch["inputs"]),
                        np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    targets, w = np.asarray(batch["targets"]), np.asarray(batch["weights"])
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return float((nll * w).sum() / w.sum())

  quantized = jax.tree.map(lambda w: _fp8_roundtrip(w) if w.ndim >= 2 else w, params)
  assert float(metrics["train_loss"]) == pytest.approx(loss_on(quantized), rel=2e-5)
  assert abs(loss_on(quantized) - loss_on(params)) > 1e-4  # the copy is really quantized
  _, losses = _train(trainer, 6)
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.parametrize("key, value, opt", [
    ("master_weights_quantizer", "fp8_e4m3", "eco_adamw"),
    ("master_weights_quantizer", "fp9", "adamw_master"),
    ("quantizer", "int3", "eco_adamw"),
    ("mode", "lazy", "eco_adamw"),
])
def test_bad_eco_keys_are_usage_errors(key, value, opt):
  config = lm.get_config(f"size=test,opt={opt}")
  config.optimizer[key] = value
  with pytest.raises(UsageError, match=f"{key}|{value}"):
    build_run(config)



def test_eco_run_resumes_from_its_own_checkpoint_like_an_uninterrupted_run(tmp_path):
  import shutil
  from trainlab.training import loop
  config = lm.get_config("size=test,opt=eco_adamw")
  config.total_steps, config.checkpoint.every_steps = 6, 3
  config.schedule.warmup_steps = 1
  straight = loop.train(config, tmp_path / "straight", progress=False)
  shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "6")  # as if killed after step 3's save
  (tmp_path / "resumed" / "summary.json").unlink()
  resumed = loop.train(config, tmp_path / "resumed", progress=False)
  assert resumed["params_sha256"] == straight["params_sha256"]
