"""Weight quantizers for training without master weights (ECO, Nikdan et al., arXiv 2601.22101).

A quantizer maps a float array to a `QuantizedArray`: a pytree whose children are the
`codes` and the `scales` (the only arrays stored) and whose static aux data is the quantizer
itself, so `q.dequantize()` needs nothing else. Formats (`QUANTIZERS` names them for configs):

  fp8_e4m3(axis=-1)  codes `float8_e4m3fn`, one float32 absmax scale per slice along `axis`
                     (`absmax / 448`); 1 byte/element + 4 bytes/scale.
  int8(axis=-1)      symmetric integer codes in [-127, 127], scale `absmax / 127`.
  int4(axis=-1)      symmetric integer codes in [-7, 7], scale `absmax / 7`, PACKED two per
                     byte (uint8; element 2i of the last axis in the low nibble, 2i+1 in the
                     high nibble, last axis padded to even length): 0.5 byte/element.
  uniform_grid(step) values `step * k`, codes int32 `k`, no scale (exact tests only).

Storage is integer: float codes and scales are held as their bit patterns (fp8 codes as the
uint8 bits of `float8_e4m3fn`, float32 scales as uint32 bits; int8, packed int4 and int32
codes as they are); `q.code_values` and `q.scale_values` read them as numbers. So the update
from `old` to `new` is `delta(old, new)`, a `QuantizedArray` of wrapping integer differences,
and `optax.apply_updates(old, delta(old, new))` (leaf by leaf `p + u` in the leaf's integer
dtype) is `new` bit for bit; a zero update leaves `old` unchanged.

`pow2_scales=True` rounds each scale up to a power of two (as MX formats do). Dequantized
values `code * 2^k` are then exact in float32, so `theta_hat + (q - theta_hat) == q` in float32
whenever the scale changes by less than 2^6 in one step: params held as dequantized floats land
exactly on the quantized grid. With float32 `absmax / qmax` scales (the default, as in the
paper) that float addition misses the grid for ~1% of elements whose value changes by more
than 2x in a step (measured for fp8); ECO feeds the error back w.r.t. the value actually
reached, so its identities still hold, and params held as `QuantizedArray` are unaffected. For
fp8 a power-of-two scale costs no precision on normal values (only the subnormal range moves by
at most one binade); for int8/int4 it can waste up to one bit.

`axis=None` means one scale for the whole tensor; `axis=a` means one scale per slice along
`a` (absmax reduced over `a`: `axis=-1` gives one scale per row of a matrix). Arrays with
fewer dimensions than `axis` needs (scalars) fall back to one scale.

Rounding: `"nearest"` rounds the scaled value to the nearest code, ties to even (the IEEE
default; for fp8 this is XLA's round-to-nearest-even conversion). `"stochastic"` picks
between the two neighbouring codes `lo <= y <= hi` with `P(hi) = (y - lo) / (hi - lo)`, so
`E[dequantize(q)] = x` (up to the float32 arithmetic of the scale); fp8's spacing depends on
the exponent, so its neighbours are found on the fp8 bit pattern, not on a uniform grid.
Values are clipped to the format's range first (fp8 e4m3fn has no infinity; 448 is its max).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

ROUNDINGS = ("nearest", "stochastic")
_FP8_MAX = 448.0


_FLOAT_BITS = {jnp.dtype(jnp.float8_e4m3fn): jnp.uint8, jnp.dtype(jnp.float32): jnp.uint32}


def _to_bits(x: jax.Array) -> jax.Array:
  """A float array as the unsigned integers of its bit patterns; integer arrays unchanged."""
  bits = _FLOAT_BITS.get(jnp.dtype(x.dtype))
  return x if bits is None else jax.lax.bitcast_convert_type(x, bits)


@jax.tree_util.register_pytree_with_keys_class
@dataclasses.dataclass(frozen=True)
class QuantizedArray:
  """Codes and scales of one quantized tensor, stored as integers (bit patterns of fp8 codes
  and float32 scales, see the module docstring); the quantizer (static) knows how to decode."""

  codes: jax.Array
  scales: jax.Array | None
  quantizer: "Quantizer"
  shape: tuple[int, ...]

  def tree_flatten(self):
    return (self.codes, self.scales), (self.quantizer, self.shape)

  def tree_flatten_with_keys(self):
    keys = (jax.tree_util.GetAttrKey("codes"), jax.tree_util.GetAttrKey("scales"))
    return tuple(zip(keys, (self.codes, self.scales))), (self.quantizer, self.shape)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(children[0], children[1], *aux)

  def dequantize(self) -> jax.Array:
    return self.quantizer.dequantize(self)

  @property
  def code_values(self) -> jax.Array:
    """The codes as numbers: float8_e4m3fn (fp8), int8, packed uint8 (int4), int32 (grid)."""
    if self.quantizer.fmt == "fp8_e4m3":
      return jax.lax.bitcast_convert_type(self.codes, jnp.float8_e4m3fn)
    return self.codes

  @property
  def scale_values(self) -> jax.Array | None:
    """The float32 scales (None for `uniform_grid`)."""
    if self.scales is None:
      return None
    return jax.lax.bitcast_convert_type(self.scales, jnp.float32)

  @property
  def dtype(self) -> jnp.dtype:
    """The dtype of the dequantized values."""
    return jnp.dtype(jnp.float32)

  @property
  def ndim(self) -> int:
    return len(self.shape)

  @property
  def size(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64))

  @property
  def nbytes(self) -> int:
    """Bytes actually stored: codes plus scales."""
    scale_bytes = 0 if self.scales is None else self.scales.size * self.scales.dtype.itemsize
    return self.codes.size * self.codes.dtype.itemsize + scale_bytes


def _is_quantized(x: Any) -> bool:
  return isinstance(x, QuantizedArray)


def delta(old: QuantizedArray, new: QuantizedArray) -> QuantizedArray:
  """The update that takes `old` to `new` under `optax.apply_updates`, exactly.

  Its children are `new.codes - old.codes` and `new.scales - old.scales`, wrapping in the
  stored integer dtypes, so `old.codes + u.codes == new.codes` bit for bit. It is not a
  quantized tensor: never dequantize it, and chain nothing after the optimizer that
  rescales updates.
  """
  if (old.quantizer, old.shape) != (new.quantizer, new.shape):
    raise ValueError(f"delta needs one quantizer and shape, got {old.quantizer} {old.shape} "
                     f"and {new.quantizer} {new.shape}")
  scales = None if new.scales is None else new.scales - old.scales
  return QuantizedArray(new.codes - old.codes, scales, new.quantizer, new.shape)


def dequantize_tree(tree: Any) -> Any:
  """Replaces every `QuantizedArray` leaf by its float32 value; other leaves pass through."""
  return jax.tree.map(lambda x: x.dequantize() if _is_quantized(x) else x, tree,
                      is_leaf=_is_quantized)


def quantize_tree(tree: Any, quantizer: "Quantizer", key: jax.Array | None = None,
                  rounding: str = "nearest",
                  predicate: Callable[[jax.Array], bool] = lambda x: x.ndim >= 2) -> Any:
  """Quantizes the leaves where `predicate(leaf)` (default: matrices and up) holds."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = [None] * len(leaves) if key is None else list(jax.random.split(key, len(leaves)))
  out = [quantizer.quantize(x, rounding, k) if predicate(x) else x for x, k in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, out)


def tree_nbytes(tree: Any) -> int:
  """Bytes stored by all arrays of `tree`, counting `QuantizedArray`s by codes + scales."""
  return sum(x.nbytes if _is_quantized(x) else x.size * x.dtype.itemsize
             for x in jax.tree.leaves(tree, is_leaf=_is_quantized))


def _check_rounding(rounding: str, key: jax.Array | None) -> None:
  if rounding not in ROUNDINGS:
    raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
  if rounding == "stochastic" and key is None:
    raise ValueError("rounding='stochastic' needs a PRNG key")


def _round_int(y: jax.Array, rounding: str, key: jax.Array | None) -> jax.Array:
  if rounding == "nearest":
    return jnp.round(y)  # half to even
  return jnp.floor(y + jax.random.uniform(key, y.shape, jnp.float32))


@dataclasses.dataclass(frozen=True)
class Quantizer:
  """Common interface: `quantize(x, rounding, key) -> QuantizedArray`, `dequantize(q)`.

  `fmt` is one of "fp8_e4m3", "int8", "int4", "uniform_grid"; use the factories below.
  """

  fmt: str
  axis: int | None = -1
  step: float = 0.0
  pow2_scales: bool = False

  @property
  def bits(self) -> int:
    """Bits per stored code (scales not included)."""
    return {"fp8_e4m3": 8, "int8": 8, "int4": 4, "uniform_grid": 32}[self.fmt]

  @property
  def qmax(self) -> float:
    return {"fp8_e4m3": _FP8_MAX, "int8": 127.0, "int4": 7.0}[self.fmt]

  def scale_shape(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """Shape of the scales for a tensor of `shape` (None: no scales)."""
    if self.fmt == "uniform_grid":
      return None
    axis = self._axis(len(shape))
    if axis is None:
      return (1,) * len(shape)
    return tuple(1 if i == axis else d for i, d in enumerate(shape))

  def _axis(self, ndim: int) -> int | None:
    if self.axis is None or ndim == 0 or not -ndim <= self.axis < ndim:
      return None
    return self.axis % ndim

  def _scales(self, x: jax.Array) -> jax.Array:
    axis = self._axis(x.ndim)
    # `initial=0`: an empty tensor (or slice) gets scale 1 instead of a reduction error.
    absmax = jnp.max(jnp.abs(x), axis=axis, keepdims=True, initial=0.0) if axis is not None else (
        jnp.max(jnp.abs(x), initial=0.0).reshape((1,) * x.ndim))
    scales = jnp.where(absmax > 0, absmax / self.qmax, 1.0).astype(jnp.float32)
    if self.pow2_scales:
      mantissa, exponent = jnp.frexp(scales)  # scales = mantissa 2^exponent, mantissa in [.5, 1)
      scales = jnp.ldexp(jnp.ones_like(scales), jnp.where(mantissa > 0.5, exponent,
                                                          exponent - 1))
    return scales

  def quantize(self, x: jax.Array, rounding: str = "nearest",
               key: jax.Array | None = None) -> QuantizedArray:
    _check_rounding(rounding, key)
    return _quantize_jit(self, jnp.asarray(x, jnp.float32), rounding, key)

  def _quantize(self, x: jax.Array, rounding: str, key: jax.Array | None) -> QuantizedArray:
    if self.fmt == "uniform_grid":
      codes = _round_int(x / self.step, rounding, key).astype(jnp.int32)
      return QuantizedArray(codes, None, self, x.shape)
    scales = self._scales(x)
    y = jnp.clip(x / scales, -self.qmax, self.qmax)
    if self.fmt == "fp8_e4m3":
      codes = _round_fp8(y, rounding, key)
    else:
      codes = jnp.clip(_round_int(y, rounding, key), -self.qmax, self.qmax).astype(jnp.int8)
      if self.fmt == "int4":
        codes = pack_int4(codes)
    return QuantizedArray(_to_bits(codes), _to_bits(scales), self, x.shape)

  def dequantize(self, q: QuantizedArray) -> jax.Array:
    return _dequantize_jit(q)

  def _dequantize(self, q: QuantizedArray) -> jax.Array:
    if self.fmt == "uniform_grid":
      return q.codes.astype(jnp.float32) * jnp.float32(self.step)
    codes = unpack_int4(q.codes, q.shape) if self.fmt == "int4" else q.code_values
    return codes.astype(jnp.float32) * q.scale_values

  def roundtrip(self, x: jax.Array, rounding: str = "nearest",
                key: jax.Array | None = None) -> jax.Array:
    """`dequantize(quantize(x))`: the float value the quantized iterate takes.

    (Not `__call__`: a callable hyperparameter would pass for a schedule in
    `optax.inject_hyperparams`.)
    """
    return self.dequantize(self.quantize(x, rounding, key))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _quantize_jit(quantizer: Quantizer, x: jax.Array, rounding: str,
                  key: jax.Array | None) -> QuantizedArray:
  return quantizer._quantize(x, rounding, key)


@jax.jit
def _dequantize_jit(q: QuantizedArray) -> jax.Array:
  return q.quantizer._dequantize(q)


def _round_fp8(y: jax.Array, rounding: str, key: jax.Array | None) -> jax.Array:
  """Rounds `y` (|y| <= 448) to float8_e4m3fn codes."""
  nearest = y.astype(jnp.float8_e4m3fn)
  if rounding == "nearest":
    return nearest
  # Neighbours of |y| on the fp8 grid: for non-negative fp8 values the bit pattern is
  # monotone, so the next code up/down is bits +- 1 (448 = 0x7E; 0x7F is NaN).
  a = jnp.abs(y)
  bits = jax.lax.bitcast_convert_type(jnp.abs(nearest), jnp.uint8)
  near = jnp.abs(nearest).astype(jnp.float32)
  other_bits = jnp.where(near < a, bits + 1, jnp.where(near > a, bits - 1, bits))
  other = jax.lax.bitcast_convert_type(other_bits.astype(jnp.uint8),
                                       jnp.float8_e4m3fn).astype(jnp.float32)
  lo, hi = jnp.minimum(near, other), jnp.maximum(near, other)
  p_up = jnp.where(hi > lo, (a - lo) / jnp.where(hi > lo, hi - lo, 1.0), 0.0)
  up = jax.random.uniform(key, y.shape, jnp.float32) < p_up
  return (jnp.sign(y) * jnp.where(up, hi, lo)).astype(jnp.float8_e4m3fn)


def pack_int4(codes: jax.Array) -> jax.Array:
  """int8 codes in [-8, 7] -> uint8, two per byte along the last axis (zero-padded to even).

  Packing along the last axis keeps the leading axes, so a sharding of them still applies.
  """
  codes = codes.reshape(codes.shape or (1,))
  codes = jnp.pad(codes, [(0, 0)] * (codes.ndim - 1) + [(0, codes.shape[-1] % 2)])
  nibbles = codes.astype(jnp.uint8) & 0xF
  return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def unpack_int4(packed: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Inverse of `pack_int4`: int8 codes of `shape`."""
  low = (packed & 0xF).astype(jnp.int8)
  high = (packed >> 4).astype(jnp.int8)
  nibbles = jnp.stack([low, high], axis=-1).reshape(packed.shape[:-1] + (-1,))
  signed = jnp.where(nibbles >= 8, nibbles - 16, nibbles).astype(jnp.int8)
  return signed[..., :(shape[-1] if shape else 1)].reshape(shape)


def fp8_e4m3(axis: int | None = -1, pow2_scales: bool = False) -> Quantizer:
  """FP8 E4M3 codes with absmax scales per slice along `axis` (None: per tensor)."""
  return Quantizer("fp8_e4m3", axis, pow2_scales=pow2_scales)


def int8(axis: int | None = -1, pow2_scales: bool = False) -> Quantizer:
  """Symmetric INT8 codes in [-127, 127] with absmax scales along `axis`."""
  return Quantizer("int8", axis, pow2_scales=pow2_scales)


def int4(axis: int | None = -1, pow2_scales: bool = False) -> Quantizer:
  """Symmetric INT4 codes in [-7, 7], packed two per byte, absmax scales along `axis`."""
  return Quantizer("int4", axis, pow2_scales=pow2_scales)


def uniform_grid(step: float) -> Quantizer:
  """Values `step * k` (int32 `k`), no scale; a power-of-two `step` makes tests exact."""
  if not step > 0:
    raise ValueError(f"step must be > 0, got {step}")
  return Quantizer("uniform_grid", None, float(step))


QUANTIZERS: dict[str, Callable[..., Quantizer]] = {
    "fp8_e4m3": fp8_e4m3,
    "int8": int8,
    "int4": int4,
    "uniform_grid": uniform_grid,
}


def get_quantizer(quantizer: str | Quantizer) -> Quantizer:
  """A `Quantizer` from a config name (default arguments) or an instance."""
  if isinstance(quantizer, Quantizer):
    return quantizer
  if quantizer not in QUANTIZERS or quantizer == "uniform_grid":
    names = ", ".join(n for n in QUANTIZERS if n != "uniform_grid")
    raise ValueError(f"quantizer must be one of {names} or a Quantizer, got {quantizer!r}")
  return QUANTIZERS[quantizer]()
