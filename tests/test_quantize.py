"""Quantizers: formats, rounding, packing and byte accounting against NumPy float64 ground truth."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

from trainlab.algorithms import quantize as qz


def fp8_e4m3_values() -> tuple[np.ndarray, np.ndarray]:
  """All finite non-negative float8_e4m3fn values from the bit layout (bias 7, no inf,
  S.1111.111 is NaN), in float64, with their 7-bit codes."""
  codes = np.arange(0x7F)
  exponent, mantissa = codes >> 3, codes & 7
  values = np.where(exponent == 0, mantissa / 8 * 2.0**-6,
                    (1 + mantissa / 8) * 2.0**(exponent - 7))
  return values.astype(np.float64), codes


def np_fp8_nearest(y: np.ndarray) -> np.ndarray:
  """Round to nearest e4m3 value, ties to the even code."""
  values, codes = fp8_e4m3_values()
  a = np.abs(y)[..., None]
  dist = np.abs(a - values)
  best = dist.min(-1, keepdims=True)
  tie_ok = (dist == best) & (codes % 2 == 0)
  pick = np.where(tie_ok.any(-1), np.argmax(tie_ok, -1), np.argmin(dist, -1))
  return np.sign(y) * values[pick]


def np_neighbours(y: np.ndarray, fmt: str) -> tuple[np.ndarray, np.ndarray]:
  """(lo, hi): the representable scaled values around y (lo == hi on the grid)."""
  if fmt == "fp8_e4m3":
    values, _ = fp8_e4m3_values()
    a = np.abs(y)
    idx = np.searchsorted(values, a)  # values[idx - 1] < a <= values[idx]
    hi = values[np.minimum(idx, len(values) - 1)]
    lo = np.where(hi == a, a, values[np.maximum(idx - 1, 0)])
    lo, hi = np.sign(y) * lo, np.sign(y) * hi
    return np.minimum(lo, hi), np.maximum(lo, hi)
  return np.floor(y), np.ceil(y)


QMAX = {"fp8_e4m3": 448.0, "int8": 127.0, "int4": 7.0}


def np_scales(x: np.ndarray, fmt: str, axis) -> np.ndarray:
  absmax = np.max(np.abs(x), axis=axis, keepdims=True) if axis is not None else np.full(
      (1,) * x.ndim, np.max(np.abs(x)))
  return (absmax.astype(np.float32) / np.float32(QMAX[fmt])).astype(np.float32)


def sample_x(shape=(4, 32), seed=0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  # Several decades per row so fp8 values land on many exponents, subnormals included.
  return (rng.standard_normal(shape) * 10.0**rng.uniform(-4, 0, shape)).astype(np.float32)


def used_scales(quantizer: qz.Quantizer, x: np.ndarray) -> np.ndarray:
  """The scales the quantizer picked (checked against absmax / qmax separately)."""
  return np.asarray(quantizer.quantize(jnp.asarray(x)).scale_values, np.float64)


FORMATS = [("fp8_e4m3", -1), ("fp8_e4m3", None), ("fp8_e4m3", 0), ("int8", -1),
           ("int4", -1), ("int4", None)]


@pytest.mark.parametrize("fmt,axis", FORMATS)
def test_scales_follow_layout(fmt, axis):
  x = sample_x()
  q = qz.QUANTIZERS[fmt](axis=axis).quantize(jnp.asarray(x))
  expected = np_scales(x, fmt, axis)
  assert q.scales.shape == expected.shape
  # XLA may divide by 448 as a multiply by 1/448: one float32 ulp.
  np.testing.assert_allclose(np.asarray(q.scale_values), expected, rtol=2.4e-7)


def test_fp8_nearest_matches_table_with_ties_to_even():
  rng = np.random.default_rng(1)
  y = rng.uniform(-448, 448, 500) * 10.0**rng.uniform(-5, 0, 500)
  values, _ = fp8_e4m3_values()
  ties = (values[1:] + values[:-1]) / 2  # exact midpoints of every pair of neighbours
  y = np.concatenate([[448.0], y, ties, -ties]).astype(np.float32)  # 448 first: scale 1
  q = qz.fp8_e4m3(axis=None).quantize(jnp.asarray(y))
  assert float(q.scale_values.reshape(())) == 1.0
  assert q.code_values.dtype == jnp.float8_e4m3fn
  np.testing.assert_array_equal(np.asarray(q.dequantize(), np.float64),
                                np_fp8_nearest(y.astype(np.float64)))


@pytest.mark.parametrize("fmt,qmax,ties,expected", [
    ("int8", 127.0, [0.5, 1.5, 2.5, -0.5, -2.5, 126.5], [0, 2, 2, 0, -2, 126]),
    ("int4", 7.0, [0.5, 1.5, 2.5, 3.5, -3.5, 6.5], [0, 2, 2, 4, -4, 6]),
])
def test_int_nearest_ties_to_even(fmt, qmax, ties, expected):
  x = jnp.asarray([qmax] + ties, jnp.float32)  # absmax = qmax: scale 1
  out = qz.QUANTIZERS[fmt](axis=None).roundtrip(x)
  np.testing.assert_array_equal(np.asarray(out), [qmax] + expected)


def test_uniform_grid_nearest_and_ties():
  grid = qz.uniform_grid(0.25)
  x = jnp.asarray([0.125, 0.375, -0.625, 0.3, 1.0])
  np.testing.assert_array_equal(np.asarray(grid.roundtrip(x)), [0.0, 0.5, -0.5, 0.25, 1.0])
  assert grid.quantize(x).scales is None


@pytest.mark.parametrize("fmt,axis", FORMATS)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_roundtrip_error_bounds(fmt, axis, rounding):
  x = sample_x(seed=2)
  quantizer = qz.QUANTIZERS[fmt](axis=axis)
  s = used_scales(quantizer, x)
  out = np.asarray(quantizer.roundtrip(jnp.asarray(x), rounding, jax.random.PRNGKey(0)),
                   np.float64)
  lo, hi = np_neighbours(x.astype(np.float64) / s, fmt)
  spacing = (hi - lo) * s
  # On the 2-point grid around each value; nearest picks the closer one.
  slack = 1e-6 * np.abs(x) + 1e-30
  assert np.all((out >= lo * s - slack) & (out <= hi * s + slack))
  if rounding == "nearest":
    assert np.all(np.abs(out - x) <= spacing / 2 + slack)
  worst = {"fp8_e4m3": 2.0**-3, "int8": 1 / 127, "int4": 1 / 7}[fmt]  # of the absmax
  assert np.all(np.abs(out - x) <= worst * s * QMAX[fmt] * (1 + 1e-6))


@pytest.mark.parametrize("fmt,axis", [("fp8_e4m3", -1), ("int8", -1), ("int4", None)])
def test_stochastic_rounding_is_unbiased(fmt, axis):
  n = 4096
  x = sample_x((2, 24), seed=3)
  quantizer = qz.QUANTIZERS[fmt](axis=axis)
  draws = jax.vmap(lambda k: quantizer.roundtrip(jnp.asarray(x), "stochastic", k))(
      jax.random.split(jax.random.PRNGKey(7), n))
  draws = np.asarray(draws, np.float64)
  s = used_scales(quantizer, x)
  y = (x / s.astype(np.float32)).astype(np.float64)  # float32 division, as the code does
  lo, hi = np_neighbours(y, fmt)
  on_lo = np.isclose(draws, lo * s, rtol=1e-6, atol=0)
  on_hi = np.isclose(draws, hi * s, rtol=1e-6, atol=0)
  assert np.all(on_lo | on_hi)
  p = np.where(hi > lo, (y - lo) / np.where(hi > lo, hi - lo, 1), 0.0)
  p_hat = np.mean(on_hi & ~on_lo, axis=0)
  tol = 5 * np.sqrt(p * (1 - p) / n) + 2 / n
  assert np.all(np.abs(p_hat - p) <= tol)
  # The same check rejects nearest rounding, so it has teeth.
  nearest = np.asarray(quantizer.roundtrip(jnp.asarray(x)), np.float64)
  assert np.any(np.abs(np.isclose(nearest, hi * s, rtol=1e-6) - p) > tol)


def test_uniform_grid_stochastic_is_unbiased():
  n = 4096
  x = np.asarray([0.1, -0.3, 0.26, 0.0, 0.5], np.float32)
  draws = np.asarray(jax.vmap(lambda k: qz.uniform_grid(0.25).roundtrip(
      jnp.asarray(x), "stochastic", k))(jax.random.split(jax.random.PRNGKey(3), n)))
  p = (x / 0.25) - np.floor(x / 0.25)
  p_hat = np.mean(draws > np.floor(x / 0.25) * 0.25, axis=0)
  assert np.all(np.abs(p_hat - p) <= 5 * np.sqrt(p * (1 - p) / n) + 2 / n)


@pytest.mark.parametrize("shape", [(), (1,), (5,), (3, 4), (2, 3, 7)])
def test_int4_packing_round_trip_and_layout(shape):
  codes = np.random.default_rng(4).integers(-8, 8, shape).astype(np.int8)
  packed = np.asarray(qz.pack_int4(jnp.asarray(codes)))
  flat_rows = codes.reshape(codes.shape or (1,))
  n = flat_rows.shape[-1]
  padded = np.concatenate([flat_rows, np.zeros(flat_rows.shape[:-1] + (n % 2,), np.int8)], -1)
  nib = padded.astype(np.uint8) & 0xF
  assert packed.dtype == np.uint8 and packed.shape == flat_rows.shape[:-1] + ((n + 1) // 2,)
  np.testing.assert_array_equal(packed, nib[..., 0::2] | (nib[..., 1::2] << 4))
  np.testing.assert_array_equal(np.asarray(qz.unpack_int4(jnp.asarray(packed), shape)), codes)


def test_int4_quantized_array_decodes_its_codes():
  x = sample_x((3, 9), seed=5)
  q = qz.int4().quantize(jnp.asarray(x))
  codes = np.asarray(qz.unpack_int4(q.codes, (3, 9)), np.float64)
  assert np.all(np.abs(codes) <= 7)
  np.testing.assert_allclose(np.asarray(q.dequantize()), codes * np.asarray(q.scale_values),
                             rtol=1e-7)


@pytest.mark.parametrize("fmt,axis,bytes_per_element", [
    ("fp8_e4m3", -1, 1 + 4 / 512), ("fp8_e4m3", None, 1 + 4 / (256 * 512)),
    ("int8", -1, 1 + 4 / 512), ("int4", -1, 0.5 + 4 / 512),
    ("int4", None, 0.5 + 4 / (256 * 512))])
def test_byte_accounting(fmt, axis, bytes_per_element):
  x = jnp.ones((256, 512), jnp.float32)
  q = qz.QUANTIZERS[fmt](axis=axis).quantize(x)
  assert q.nbytes / x.size == bytes_per_element
  assert q.nbytes == sum(a.nbytes for a in jax.tree.leaves(q))  # real buffers, not claims
  assert qz.QUANTIZERS[fmt](axis=axis).bits == (4 if fmt == "int4" else 8)


def test_trees_quantize_matrices_and_count_bytes():
  params = {"w": jnp.ones((64, 32)), "b": jnp.ones((32,))}
  qparams = qz.quantize_tree(params, qz.fp8_e4m3())
  assert isinstance(qparams["w"], qz.QuantizedArray) and not isinstance(
      qparams["b"], qz.QuantizedArray)
  assert qz.tree_nbytes(qparams) == 64 * 32 + 64 * 4 + 32 * 4
  back = jax.jit(qz.dequantize_tree)(qparams)  # a pytree: goes through jit
  np.testing.assert_array_equal(np.asarray(back["w"]), np.ones((64, 32)))
  assert back["w"].dtype == jnp.float32


def test_zero_rows_and_saturation_stay_finite():
  x = jnp.asarray([[0.0, 0.0, 0.0], [1e30, -1e30, 1.0]], jnp.float32)
  for fmt in ("fp8_e4m3", "int8", "int4"):
    out = np.asarray(qz.QUANTIZERS[fmt]().roundtrip(x, "stochastic", jax.random.PRNGKey(0)))
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[0], 0.0)
    np.testing.assert_allclose(out[1, :2], [1e30, -1e30], rtol=1e-6)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="rounding"):
    qz.int8().quantize(jnp.ones(3), "floor")
  with pytest.raises(ValueError, match="key"):
    qz.int8().quantize(jnp.ones(3), "stochastic")
  with pytest.raises(ValueError, match="step"):
    qz.uniform_grid(0.0)
  with pytest.raises(ValueError, match="quantizer"):
    qz.get_quantizer("fp4")


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "int8", "int4"])
def test_pow2_scales_round_absmax_scale_up_to_a_power_of_two(fmt):
  x = sample_x(seed=6)
  q = qz.QUANTIZERS[fmt](pow2_scales=True).quantize(jnp.asarray(x))
  s = np.asarray(q.scale_values, np.float64)
  exact = np.max(np.abs(x.astype(np.float64)), axis=-1, keepdims=True) / QMAX[fmt]
  assert np.all(np.log2(s) == np.round(np.log2(s)))
  assert np.all((s >= exact * (1 - 1e-6)) & (s < 2 * exact))
  out = np.asarray(q.dequantize(), np.float64)
  lo, hi = np_neighbours(x.astype(np.float64) / s, fmt)
  assert np.all(np.abs(out - x) <= (hi - lo) * s / 2 + 1e-6 * np.abs(x))


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "int8", "int4"])
def test_storage_is_the_bit_patterns_of_the_values(fmt):
  x = jnp.asarray(sample_x(seed=7))
  q = qz.QUANTIZERS[fmt]().quantize(x)
  codes_dtype = {"fp8_e4m3": jnp.uint8, "int8": jnp.int8, "int4": jnp.uint8}[fmt]
  assert q.codes.dtype == codes_dtype and q.scales.dtype == jnp.uint32
  assert [path for path, _ in jax.tree_util.tree_leaves_with_path(q)] == [
      (jax.tree_util.GetAttrKey("codes"),), (jax.tree_util.GetAttrKey("scales"),)]
  np.testing.assert_array_equal(np.asarray(q.scales).view(np.float32),
                                np.asarray(q.scale_values))
  if fmt == "fp8_e4m3":
    np.testing.assert_array_equal(np.asarray(q.codes).view(ml_dtypes.float8_e4m3fn)
                                  .astype(np.float32), np.asarray(q.code_values, np.float32))


@pytest.mark.parametrize("name", ["fp8_e4m3", "int8", "int4", "grid"])
def test_apply_updates_with_delta_lands_exactly_on_the_new_array(name):
  """`optax.apply_updates(old, delta(old, new))` is `new` bit for bit (wrapping integer adds),
  here with scales growing 50,000x, where float32 addition of the scales would miss; a zero
  update leaves `old` as it is."""
  quantizer = {"grid": qz.uniform_grid(2.0**-6)}.get(name) or qz.QUANTIZERS[name]()
  key = jax.random.PRNGKey(0)
  old = quantizer.quantize(jax.random.normal(key, (8, 16)) * 1e-3)
  new = quantizer.quantize(jax.random.normal(jax.random.fold_in(key, 1), (8, 16)) * 50.0)
  landed = optax.apply_updates(old, qz.delta(old, new))
  assert isinstance(landed, qz.QuantizedArray)
  for a, b in zip(jax.tree.leaves(landed), jax.tree.leaves(new)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(np.asarray(landed.dequantize()), np.asarray(new.dequantize()))
  same = optax.apply_updates(old, optax.tree.zeros_like(qz.delta(old, new)))
  for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(old)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="quantizer"):
    qz.delta(old, qz.int8(axis=None).quantize(jnp.ones((8, 16))))


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "int8", "int4"])
def test_empty_arrays_quantize(fmt):
  q = qz.QUANTIZERS[fmt]().quantize(jnp.zeros((0,)))
  assert q.dequantize().shape == (0,)
  assert qz.QUANTIZERS[fmt]().roundtrip(jnp.zeros((3, 0))).shape == (3, 0)
