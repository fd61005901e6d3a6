"""One interface over every dataset: step-indexed training batches and fixed eval sets.

`Dataset.train_batch(step)` is a pure function of `(seed, step)`; `Dataset.eval_batches()` (the
validation set: what runs report as `eval_loss` and tuning reads) and `Dataset.test_batches()`
(the test set, never used for a choice) are the same lists on every call and for every seed, so
losses compare across runs. Every batch is a dict of NumPy arrays: `inputs`, `targets` and
`weights` (1 for real examples or tokens, 0 for padding in the last eval batch).

Text corpora hold out documents for validation and test. Image datasets evaluate on their test
split unless `holdout` > 0, which holds out that many training examples (a permutation fixed by
`split_seed`) as the validation set; the test split is then the test set.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from trainlab.data import images, text, tokens
from trainlab.errors import UsageError

IMAGE_DATASETS: dict[str, Callable[..., images.ImageDataset]] = {
    "fashion-mnist": lambda path, split_seed: images.load_fashion_mnist(path),
    "digits": lambda path, split_seed: images.load_digits(split_seed),
}
DATASET_NAMES = tuple(sorted([*text.CORPORA, *IMAGE_DATASETS, "tokens"]))
_EVAL_STREAM = 0xE7A1  # rng stream of the eval windows, independent of the run's seed


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset bound to a seed and batch shape."""
  name: str
  kind: str  # "lm" or "image"
  num_classes: int  # vocabulary size for "lm"
  input_shape: tuple[int, ...]  # one example, e.g. (seq_len,) or (28, 28, 1)
  train_batch: Callable[[int], dict[str, np.ndarray]]
  eval_batches: Callable[[], list[dict[str, np.ndarray]]]
  baseline_loss: float | None = None  # unigram cross-entropy for "lm", ln(classes) for images
  train_size: int = 0  # examples (images), bytes (text) or tokens ("tokens") in the training split
  test_batches: Callable[[], list[dict[str, np.ndarray]]] | None = None  # None: no test split


def _with_weights(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {**batch, "weights": np.ones(batch["targets"].shape, np.float32)}


def _windows(data: np.ndarray, batch_size: int, seq_len: int, count: int):
  """`count` fixed batches of random windows of `data` (the same for every run)."""
  return lambda: [_with_weights(text.random_windows(
      data, np.random.default_rng([_EVAL_STREAM, i]), batch_size, seq_len)) for i in range(count)]


def _fixed_batches(images_: np.ndarray, labels: np.ndarray, batch_size: int):
  """Every example once, in order, the last batch padded with weight-0 rows."""

  def batches() -> list[dict[str, np.ndarray]]:
    out = []
    for start in range(0, len(labels), batch_size):
      x, y = images_[start:start + batch_size], labels[start:start + batch_size]
      pad = batch_size - len(y)
      out.append({
          "inputs": np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]),
          "targets": np.concatenate([y, np.zeros(pad, y.dtype)]),
          "weights": np.concatenate([np.ones(len(y), np.float32), np.zeros(pad, np.float32)]),
      })
    return out

  return batches


def make_dataset(name: str, *, seed: int, batch_size: int, seq_len: int = 0,
                 eval_batches: int = 4, path: str = "", split_seed: int = 0,
                 vocab_size: int = 0, holdout: int = 0) -> Dataset:
  """Builds dataset `name`; raises `UsageError` for unknown names or missing files.

  `path` and `vocab_size` are the shards and vocabulary of `tokens` (see `tokens.py`);
  `holdout` is the validation set carved out of an image dataset's training split.
  """
  if name == "tokens":
    return _token_dataset(seed=seed, batch_size=batch_size, seq_len=seq_len,
                          eval_batches=eval_batches, path=path, vocab_size=vocab_size)
  if name in text.CORPORA:
    corpus = text.load_corpus(name, split_seed=split_seed)
    if seq_len <= 0:
      raise UsageError(f"data.seq_len must be > 0 for {name!r}, got {seq_len}")

    def train_batch(step: int) -> dict[str, np.ndarray]:
      rng = np.random.default_rng([seed, step])
      return _with_weights(text.random_windows(corpus.train_bytes, rng, batch_size, seq_len))

    return Dataset(name, "lm", text.VOCAB_SIZE, (seq_len,), train_batch,
                   _windows(corpus.validation_bytes, batch_size, seq_len, eval_batches),
                   corpus.unigram_entropy(), len(corpus.train_bytes),
                   _windows(corpus.test_bytes, batch_size, seq_len, eval_batches))

  if name in IMAGE_DATASETS:
    ds = IMAGE_DATASETS[name](path, split_seed)
    train_x, train_y = ds.train_images, ds.train_labels
    test = _fixed_batches(ds.test_images, ds.test_labels, batch_size)
    validation = test
    if holdout:
      if not 0 < holdout < len(train_y) - batch_size:
        raise UsageError(f"data.holdout={holdout} must leave at least one training batch of the "
                         f"{len(train_y)} examples; lower it")
      order = np.random.default_rng([split_seed, 0x5EED]).permutation(len(train_y))
      kept, held = np.sort(order[holdout:]), np.sort(order[:holdout])
      validation = _fixed_batches(train_x[held], train_y[held], batch_size)
      train_x, train_y = train_x[kept], train_y[kept]

    def image_train_batch(step: int) -> dict[str, np.ndarray]:
      return _with_weights(images.epoch_batch(train_x, train_y, seed, step, batch_size))

    return Dataset(name, "image", ds.num_classes, ds.train_images.shape[1:], image_train_batch,
                   validation, float(np.log(ds.num_classes)), len(train_y), test)

  raise UsageError(f"data.name={name!r} is unknown; use one of {', '.join(DATASET_NAMES)}")


def _token_dataset(*, seed: int, batch_size: int, seq_len: int, eval_batches: int, path: str,
                   vocab_size: int) -> Dataset:
  if seq_len <= 0:
    raise UsageError(f"data.seq_len must be > 0 for 'tokens', got {seq_len}")
  corpus = tokens.load_corpus(path, vocab_size=vocab_size, seq_len=seq_len,
                              holdout_tokens=eval_batches * batch_size * (seq_len + 1))

  def train_batch(step: int) -> dict[str, np.ndarray]:
    return _with_weights(corpus.train.windows(np.random.default_rng([seed, step]), batch_size))

  def token_eval_batches() -> list[dict[str, np.ndarray]]:
    return [_with_weights(corpus.validation.windows(np.random.default_rng([_EVAL_STREAM, i]),
                                                    batch_size)) for i in range(eval_batches)]

  return Dataset("tokens", "lm", vocab_size, (seq_len,), train_batch, token_eval_batches,
                 corpus.unigram_entropy, corpus.train.num_tokens)
