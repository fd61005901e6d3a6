"""Byte-level language-modelling corpora built from what every Python installation ships.

- `stdlib-code`: the standard library's `.py` sources (site-packages excluded);
- `pydoc-english`: the English prose of `pydoc_data.topics`, one document per topic;
- `c-headers`: the interpreter's C headers (`.h` files under the include folder).

Documents are split into train, validation and test by document, with a permutation fixed by
`split_seed` (5% of the documents and at least 64 KiB each held out, alternately to
validation and test). The training batch of step `s`
is a pure function of `(seed, s)`: windows of `seq_len + 1` bytes at offsets drawn from
`np.random.default_rng([seed, s])`, so a resumed run sees exactly the batches an uninterrupted
one would, with no iterator state.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import sysconfig

import numpy as np

from trainlab.errors import UsageError

VOCAB_SIZE = 256
_DOC_SEPARATOR = b"\n\n"


def _stdlib_documents() -> dict[str, bytes]:
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  paths = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
  return {str(p.relative_to(root)): p.read_bytes() for p in paths}


def _pydoc_documents() -> dict[str, bytes]:
  from pydoc_data import topics
  return {name: text.encode("utf-8") for name, text in sorted(topics.topics.items())}


def _header_documents() -> dict[str, bytes]:
  root = pathlib.Path(sysconfig.get_paths()["include"])
  paths = sorted(root.rglob("*.h"))
  return {str(p.relative_to(root)): p.read_bytes() for p in paths}


CORPORA = {
    "stdlib-code": _stdlib_documents,
    "pydoc-english": _pydoc_documents,
    "c-headers": _header_documents,
}


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity; load_corpus caches it
class ByteCorpus:
  """A corpus as three flat byte arrays (train, validation, test), documents joined by a blank
  line."""
  name: str
  train_bytes: np.ndarray
  validation_bytes: np.ndarray
  test_bytes: np.ndarray

  def unigram_entropy(self) -> float:
    """Cross-entropy (nats/byte) of validation bytes under train byte frequencies (+1 smoothed)."""
    return _unigram_entropy(self)


@functools.lru_cache(maxsize=None)
def _unigram_entropy(corpus: ByteCorpus) -> float:
  counts = np.bincount(corpus.train_bytes, minlength=VOCAB_SIZE).astype(np.float64) + 1.0
  log_probs = np.log(counts / counts.sum())
  return float(-log_probs[corpus.validation_bytes].mean())


@functools.lru_cache(maxsize=None)
def load_corpus(name: str, held_out_fraction: float = 0.05, split_seed: int = 0,
                min_held_out_bytes: int = 1 << 16) -> ByteCorpus:
  """Loads corpus `name` and splits it by document: documents taken in a permutation fixed by
  `split_seed` are held out, alternately to validation and to test, until both hold at least
  `held_out_fraction` of the documents and `min_held_out_bytes` (64 KiB: enough windows for an
  eval whose standard error is small)."""
  if name not in CORPORA:
    raise UsageError(f"data.name={name!r} is not a text corpus; use one of {sorted(CORPORA)}")
  documents = CORPORA[name]()
  if len(documents) < 3:
    raise UsageError(f"corpus {name!r} has {len(documents)} documents on this machine; "
                     "it needs at least 3 to split")
  names = sorted(documents)
  order = np.random.default_rng(split_seed).permutation(len(names))
  held_docs = max(2, round(held_out_fraction * len(names)))
  splits: tuple[list[str], list[str]] = ([], [])
  sizes = [0, 0]
  for position, index in enumerate(order[:-1]):  # at least one training document stays
    if position >= held_docs and min(sizes) >= min_held_out_bytes:
      break
    splits[position % 2].append(names[index])
    sizes[position % 2] += len(documents[names[index]])
  validation_names, test_names = set(splits[0]), set(splits[1])

  def join(selected: list[str]) -> np.ndarray:
    blob = _DOC_SEPARATOR.join(documents[n] for n in selected)
    return np.frombuffer(blob, dtype=np.uint8)

  return ByteCorpus(
      name=name,
      train_bytes=join([n for n in names if n not in validation_names | test_names]),
      validation_bytes=join([n for n in names if n in validation_names]),
      test_bytes=join([n for n in names if n in test_names]),
  )


def random_windows(data: np.ndarray, rng: np.random.Generator, batch_size: int,
                   seq_len: int) -> dict[str, np.ndarray]:
  """`batch_size` random windows: inputs and next-byte targets, both int32 [B, L]."""
  if len(data) <= seq_len + 1:
    raise UsageError(f"data.seq_len={seq_len} is longer than the split ({len(data)} bytes); "
                     "lower data.seq_len")
  starts = rng.integers(0, len(data) - seq_len - 1, size=batch_size)
  windows_BxL1 = data[starts[:, None] + np.arange(seq_len + 1)].astype(np.int32)
  return {"inputs": windows_BxL1[:, :-1], "targets": windows_BxL1[:, 1:]}
