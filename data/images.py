"""Image classification data: Fashion-MNIST from its IDX files, and scikit-learn's digits.

Nothing is downloaded. Fashion-MNIST is read from `data.path` or from where Debian's
`dataset-fashion-mnist` package puts it. The training batch of step `s` is a pure function of
`(seed, s)`: epoch `e = s * B // N` uses the permutation `default_rng([seed, e])`, so every
example is seen once per epoch and no iterator state is needed to resume.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import pathlib

import numpy as np

from trainlab.errors import UsageError

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclasses.dataclass(frozen=True)
class ImageDataset:
  """Images as float32 [N, H, W, C] in [0, 1] and int32 labels."""
  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int = 10


def read_idx(path: pathlib.Path) -> np.ndarray:
  """Reads an IDX file (optionally gzipped) as written by LeCun et al. for MNIST."""
  opener = gzip.open if path.suffix == ".gz" else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise UsageError(f"cannot read IDX file {path}: {e}; reinstall the dataset") from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise UsageError(f"{path} is not an IDX file (bad magic number); point data.path at the "
                     "Fashion-MNIST folder")
  ndim = raw[3]
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  array = np.frombuffer(raw, dtype=_IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
  if array.size != int(np.prod(shape)):
    raise UsageError(f"{path} is truncated: header says {shape}, found {array.size} values")
  return array.reshape(shape)


def _find_idx(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
  for candidate in (folder / f"{stem}.gz", folder / stem):
    if candidate.exists():
      return candidate
  return None


@functools.lru_cache(maxsize=None)
def load_fashion_mnist(path: str = "") -> ImageDataset:
  """Fashion-MNIST (Xiao et al., 2017) from `path` or Debian's `dataset-fashion-mnist`."""
  folder = pathlib.Path(path or DEBIAN_FASHION_MNIST)
  arrays = {}
  for key, stem in _FASHION_FILES.items():
    found = _find_idx(folder, stem)
    if found is None:
      raise UsageError(
          f"Fashion-MNIST not found ({stem}[.gz] missing in {folder}); install it with "
          "'apt-get install dataset-fashion-mnist' or set data.path to its folder")
    arrays[key] = read_idx(found)
  to_images = lambda x: (x.astype(np.float32) / 255.0)[..., None]
  return ImageDataset(
      name="fashion-mnist",
      train_images=to_images(arrays["train_images"]),
      train_labels=arrays["train_labels"].astype(np.int32),
      test_images=to_images(arrays["test_images"]),
      test_labels=arrays["test_labels"].astype(np.int32),
  )


@functools.lru_cache(maxsize=None)
def load_digits(split_seed: int = 0, test_fraction: float = 0.2) -> ImageDataset:
  """scikit-learn's 1,797 8x8 handwritten digits, split by a permutation fixed by seed."""
  from sklearn import datasets
  digits = datasets.load_digits()
  images = (digits.images.astype(np.float32) / 16.0)[..., None]
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng(split_seed).permutation(len(labels))
  num_test = round(test_fraction * len(labels))
  test, train = order[:num_test], order[num_test:]
  return ImageDataset("digits", images[train], labels[train], images[test], labels[test])


def epoch_batch(images: np.ndarray, labels: np.ndarray, seed: int, step: int,
                batch_size: int) -> dict[str, np.ndarray]:
  """The batch of `step`: a slice of its epoch's permutation (no example repeats in an epoch)."""
  n = len(labels)
  if batch_size > n:
    raise UsageError(f"batch_size={batch_size} exceeds the {n} training examples; lower it")
  batches_per_epoch = n // batch_size
  epoch, index = divmod(step, batches_per_epoch)
  order = np.random.default_rng([seed, epoch]).permutation(n)
  chosen = order[index * batch_size:(index + 1) * batch_size]
  return {"inputs": images[chosen], "targets": labels[chosen]}
