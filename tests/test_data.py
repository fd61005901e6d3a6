"""Datasets are deterministic in (seed, step), split by document, and fail clearly."""

from __future__ import annotations

import gzip
import pathlib

import numpy as np
import pytest

from trainlab.data import make_dataset
from trainlab.errors import UsageError
from trainlab.data import images, text


@pytest.mark.parametrize("name", ["stdlib-code", "pydoc-english", "c-headers"])
def test_text_batches_are_a_pure_function_of_seed_and_step(name):
  a = make_dataset(name, seed=3, batch_size=4, seq_len=32)
  b = make_dataset(name, seed=3, batch_size=4, seq_len=32)
  np.testing.assert_array_equal(a.train_batch(7)["inputs"], b.train_batch(7)["inputs"])
  assert not np.array_equal(a.train_batch(7)["inputs"], a.train_batch(8)["inputs"])
  other_seed = make_dataset(name, seed=4, batch_size=4, seq_len=32)
  assert not np.array_equal(a.train_batch(7)["inputs"], other_seed.train_batch(7)["inputs"])
  batch = a.train_batch(0)
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  assert batch["inputs"].shape == (4, 32) and batch["inputs"].dtype == np.int32


def test_eval_batches_do_not_depend_on_the_run_seed():
  a = make_dataset("pydoc-english", seed=0, batch_size=4, seq_len=16, eval_batches=3)
  b = make_dataset("pydoc-english", seed=9, batch_size=4, seq_len=16, eval_batches=3)
  assert len(a.eval_batches()) == 3
  for x, y in zip(a.eval_batches(), b.eval_batches()):
    np.testing.assert_array_equal(x["inputs"], y["inputs"])


def test_split_is_by_document_and_fixed_by_seed():
  documents = text.CORPORA["pydoc-english"]()
  corpus = text.load_corpus("pydoc-english", split_seed=0)
  total = sum(len(d) for d in documents.values()) + 2 * (len(documents) - 3)
  splits = (corpus.train_bytes, corpus.validation_bytes, corpus.test_bytes)
  assert sum(len(s) for s in splits) == total  # every document in exactly one split
  assert len(corpus.validation_bytes) >= 1 << 16 and len(corpus.test_bytes) >= 1 << 16
  assert len(corpus.train_bytes) > total // 2
  again = text.load_corpus("pydoc-english", held_out_fraction=0.05, split_seed=0)
  np.testing.assert_array_equal(corpus.test_bytes, again.test_bytes)
  other = text.load_corpus("pydoc-english", split_seed=1)
  assert not np.array_equal(corpus.validation_bytes, other.validation_bytes)


def test_unigram_baseline_is_a_cross_entropy():
  corpus = text.load_corpus("c-headers")
  assert 2.0 < corpus.unigram_entropy() < np.log(256)


def _write_idx(path: pathlib.Path, array: np.ndarray, gz: bool) -> None:
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
  raw = header + array.astype(np.uint8).tobytes()
  (gzip.open if gz else open)(path, "wb").write(raw)


def test_idx_reader_on_files_it_writes(tmp_path):
  rng = np.random.default_rng(0)
  imgs = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
  _write_idx(tmp_path / "a.gz", imgs, gz=True)
  _write_idx(tmp_path / "b", imgs[:, :3, :4], gz=False)
  np.testing.assert_array_equal(images.read_idx(tmp_path / "a.gz"), imgs)
  np.testing.assert_array_equal(images.read_idx(tmp_path / "b"), imgs[:, :3, :4])
  (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
  with pytest.raises(UsageError, match="not an IDX file"):
    images.read_idx(tmp_path / "bad")
  (tmp_path / "short").write_bytes((tmp_path / "b").read_bytes()[:-5])
  with pytest.raises(UsageError, match="truncated"):
    images.read_idx(tmp_path / "short")


def test_fashion_mnist_from_a_folder_of_idx_files(tmp_path):
  rng = np.random.default_rng(1)
  for stem, shape in [("train-images-idx3-ubyte", (20, 28, 28)), ("train-labels-idx1-ubyte", (20,)),
                      ("t10k-images-idx3-ubyte", (6, 28, 28)), ("t10k-labels-idx1-ubyte", (6,))]:
    _write_idx(tmp_path / f"{stem}.gz", rng.integers(0, 10, size=shape), gz=True)
  ds = make_dataset("fashion-mnist", seed=0, batch_size=4, path=str(tmp_path))
  batch = ds.train_batch(2)
  assert batch["inputs"].shape == (4, 28, 28, 1) and batch["targets"].shape == (4,)
  evals = ds.eval_batches()
  assert sum(b["weights"].sum() for b in evals) == 6  # padded last batch is masked out


@pytest.mark.skipif(not pathlib.Path(images.DEBIAN_FASHION_MNIST).exists(),
                    reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
def test_real_fashion_mnist_files():
  ds = images.load_fashion_mnist()
  assert ds.train_images.shape == (60_000, 28, 28, 1)
  assert ds.test_images.shape == (10_000, 28, 28, 1)
  assert set(np.unique(ds.train_labels)) == set(range(10))
  assert 0.0 <= ds.train_images.min() and ds.train_images.max() <= 1.0


def test_missing_fashion_mnist_names_the_fix(tmp_path):
  with pytest.raises(UsageError, match="apt-get install dataset-fashion-mnist"):
    make_dataset("fashion-mnist", seed=0, batch_size=4, path=str(tmp_path / "nowhere"))


def test_image_epochs_visit_every_example_once_and_replay_exactly():
  n, batch_size = 100, 8
  ids = np.arange(n)
  per_epoch = n // batch_size
  epoch0 = np.concatenate([images.epoch_batch(ids, ids, 5, s, batch_size)["targets"]
                           for s in range(per_epoch)])
  assert len(np.unique(epoch0)) == per_epoch * batch_size
  epoch1 = np.concatenate([images.epoch_batch(ids, ids, 5, s, batch_size)["targets"]
                           for s in range(per_epoch, 2 * per_epoch)])
  assert len(np.unique(epoch1)) == per_epoch * batch_size
  assert not np.array_equal(epoch0, epoch1)
  np.testing.assert_array_equal(images.epoch_batch(ids, ids, 5, 17, batch_size)["targets"],
                                images.epoch_batch(ids, ids, 5, 17, batch_size)["targets"])


def test_unknown_dataset_is_a_usage_error():
  with pytest.raises(UsageError, match="data.name='nope' is unknown"):
    make_dataset("nope", seed=0, batch_size=4, seq_len=8)
