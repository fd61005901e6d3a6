"""Pre-tokenized corpora on disk, memory-mapped: nanoGPT's flat files and llm.c's fineweb shards.

Two formats, detected per file by its first little-endian int32:
- *fineweb shard*: 256 int32 (`[0]` magic, `[1]` version, `[2]` token count, the rest 0), then
  the tokens. Magic 20240520 version 1 is uint16 (GPT-2), 20240801 version 7 is uint32 (llama-3).
  Writer: karpathy/llm.c `dev/data/data_common.py` `write_datafile` (commit f1e2ace6); the same
  header in KellerJordan/modded-nanogpt `data/fineweb.py` `write_datafile` and its reader
  `train_gpt.py` `_load_data_shard` (commit f411b3d3).
- *flat*: uint16 tokens with no header, as nanoGPT's `data/*/prepare.py` writes `train.bin` and
  `val.bin` (karpathy/nanoGPT commit 3adf61e1). Every file without a known magic is read so,
  except one whose first 1024 bytes look like a header (int32s 3..255 zero) with an unknown magic.

Validation comes from the *val shards*: files whose name starts with `val` or contains `_val_`
(`val.bin`, `fineweb_val_000000.bin`). With none, the last
`max(1% of the train tokens, holdout_tokens)` tokens of the train shards (in sorted order) are
held out and no training window touches them. A window is `seq_len + 1` consecutive tokens of
one shard; every window of a split is equally likely, so shards are weighted by length, and
shards shorter than a window contribute none.

Token ids at or above `vocab_size` are an error naming the shard. The check rides on the unigram
counts (one streaming `np.bincount` pass per shard) that the baseline loss needs; the counts
are cached in-process and under `$XDG_CACHE_HOME/trainlab/token_counts` (default `~/.cache`),
keyed by path, size and modification time.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import math
import os
import pathlib

import numpy as np

from trainlab.errors import UsageError

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
# magic -> (version, token dtype), from llm.c's HEADERS_INFO.
FINEWEB_FORMATS = {20240520: (1, np.dtype("<u2")), 20240801: (7, np.dtype("<u4"))}
FLAT_DTYPE = np.dtype("<u2")
HOLDOUT_FRACTION = 0.01
_CHUNK_TOKENS = 1 << 24


def is_validation_shard(path: pathlib.Path) -> bool:
  return path.name.startswith("val") or "_val_" in path.name


def find_shards(path: str) -> list[pathlib.Path]:
  """The shard files at `path`: one file, the `*.bin` files of a folder, or a glob's files."""
  if not path:
    raise UsageError("data.path is empty; set --config.data.path to a token shard, a folder of "
                     ".bin shards or a glob (write them with python -m launch.prepare_tokens)")
  expanded = os.path.expanduser(path)
  if any(c in expanded for c in "*?["):
    files = [pathlib.Path(p) for p in glob.glob(expanded, recursive=True)]
  elif os.path.isdir(expanded):
    files = list(pathlib.Path(expanded).glob("*.bin"))
  else:
    files = [pathlib.Path(expanded)] if os.path.exists(expanded) else []
  files = sorted(p for p in files if p.is_file())
  if not files:
    raise UsageError(f"data.path={path!r} matches no token shards; point it at a shard file, "
                     "a folder of .bin shards or a glob")
  return files


def shard_header(num_tokens: int, dtype: np.dtype) -> bytes:
  """The 256-int32 fineweb header for `num_tokens` tokens of `dtype` (uint16 or uint32)."""
  magic = next(m for m, (_, d) in FINEWEB_FORMATS.items() if d.itemsize == np.dtype(dtype).itemsize)
  header = np.zeros(HEADER_INTS, np.dtype("<i4"))
  header[:3] = magic, FINEWEB_FORMATS[magic][0], num_tokens
  return header.tobytes()


def write_shard(path: pathlib.Path, tokens_N: np.ndarray, fmt: str = "fineweb") -> None:
  """Writes `tokens_N` as a fineweb shard (uint16, or uint32 above 65535) or a flat uint16 file."""
  if fmt == "bin":
    pathlib.Path(path).write_bytes(np.asarray(tokens_N, FLAT_DTYPE).tobytes())
    return
  dtype = np.dtype("<u2") if len(tokens_N) == 0 or np.max(tokens_N) < 2**16 else np.dtype("<u4")
  pathlib.Path(path).write_bytes(shard_header(len(tokens_N), dtype) +
                                 np.asarray(tokens_N, dtype).tobytes())


def open_shard(path: pathlib.Path) -> np.ndarray:
  """The tokens of one shard as a read-only memmap; `UsageError` for an empty or corrupt file."""
  return _mapped(path, shard_layout(path))


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a shard's tokens are, and which version of the file that describes."""
  dtype: np.dtype
  offset: int  # bytes
  count: int  # tokens
  stamp: tuple[int, int, int]  # inode, size, modification time (ns)


# Each memmap holds a file descriptor (fineweb100B has about 1000 shards), so only the most
# recently used stay open; a rewritten file has a new stamp and is mapped afresh.
@functools.lru_cache(maxsize=256)
def _mapped(path: pathlib.Path, layout: Layout) -> np.ndarray:
  return np.memmap(path, layout.dtype, mode="r", offset=layout.offset, shape=(layout.count,))


def shard_layout(path: pathlib.Path) -> Layout:
  """Where the tokens of one shard are; `UsageError` unless its header and size agree."""
  stat = path.stat()
  size, stamp = stat.st_size, (stat.st_ino, stat.st_size, stat.st_mtime_ns)
  regenerate = "regenerate it or remove it from data.path"
  if size == 0:
    raise UsageError(f"token shard {path} is empty; {regenerate}")
  with open(path, "rb") as f:
    head = f.read(HEADER_BYTES)
  ints = np.frombuffer(head[:len(head) // 4 * 4], np.dtype("<i4"))
  magic = int(ints[0]) if len(ints) else None
  if magic in FINEWEB_FORMATS:
    version, dtype = FINEWEB_FORMATS[magic]
    if len(ints) < HEADER_INTS:
      raise UsageError(f"token shard {path} is truncated inside its {HEADER_BYTES}-byte header "
                       f"({size} bytes); {regenerate}")
    if int(ints[1]) != version:
      raise UsageError(f"token shard {path} has version {int(ints[1])} for magic {magic}; "
                       f"expected {version} (llm.c's format); {regenerate}")
    count = int(ints[2])
    if count <= 0:
      raise UsageError(f"token shard {path} holds no tokens (header count {count}); {regenerate}")
    expected = HEADER_BYTES + count * dtype.itemsize
    if size != expected:
      state = "truncated" if size < expected else "longer than its header says"
      raise UsageError(f"token shard {path} is {state}: the header says {count} tokens "
                       f"({expected} bytes) but the file has {size} bytes; {regenerate}")
    return Layout(dtype, HEADER_BYTES, count, stamp)
  if len(ints) == HEADER_INTS and magic != 0 and not ints[3:].any():
    known = ", ".join(str(m) for m in FINEWEB_FORMATS)
    raise UsageError(f"token shard {path} has a fineweb-style header with unknown magic {magic} "
                     f"(expected {known}); {regenerate}")
  if size % FLAT_DTYPE.itemsize:
    raise UsageError(f"token shard {path} has an odd size ({size} bytes), so it is not flat "
                     f"uint16 tokens (truncated?); {regenerate}")
  return Layout(FLAT_DTYPE, 0, size // FLAT_DTYPE.itemsize, stamp)


@dataclasses.dataclass(frozen=True)
class Segment:
  """Tokens `[start, stop)` of one shard."""
  path: pathlib.Path
  layout: Layout
  start: int
  stop: int

  def __len__(self) -> int:
    return self.stop - self.start

  @property
  def tokens(self) -> np.ndarray:
    """The whole shard, memory-mapped."""
    return _mapped(self.path, self.layout)


def _cache_dir() -> pathlib.Path:
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(root) / "trainlab" / "token_counts"


def _out_of_range(path: pathlib.Path, token: int, vocab_size: int) -> UsageError:
  return UsageError(f"token shard {path} holds token id {token} >= data.vocab_size={vocab_size}; "
                    f"set --config.data.vocab_size to the tokenizer's vocabulary (at least "
                    f"{token + 1}) or rebuild the shard")


def token_counts(segment: Segment, vocab_size: int) -> np.ndarray:
  """How often each id in `[0, vocab_size)` occurs in `segment` (int64); checks the range."""
  _, size, mtime_ns = segment.layout.stamp
  key = f"{segment.path.resolve()}|{size}|{mtime_ns}|{segment.start}|{segment.stop}"
  if key not in _COUNTS:
    cached = _cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()}.npy"
    try:
      _COUNTS[key] = np.load(cached)
    except (OSError, ValueError):
      _COUNTS[key] = _count(segment, vocab_size)
      _store(cached, _COUNTS[key])
  counts = _COUNTS[key]
  if len(counts) > vocab_size:
    raise _out_of_range(segment.path, len(counts) - 1, vocab_size)
  return np.pad(counts, (0, vocab_size - len(counts)))


_COUNTS: dict[str, np.ndarray] = {}  # token_counts' in-process cache


def _count(segment: Segment, vocab_size: int) -> np.ndarray:
  """The segment's histogram, up to its largest id, in chunks (the range check comes first)."""
  counts = np.zeros(0, np.int64)
  for lo in range(segment.start, segment.stop, _CHUNK_TOKENS):
    chunk = segment.tokens[lo:min(lo + _CHUNK_TOKENS, segment.stop)]
    if (largest := int(chunk.max())) >= vocab_size:
      raise _out_of_range(segment.path, largest, vocab_size)
    chunk_counts = np.bincount(chunk)
    counts = np.pad(counts, (0, max(0, len(chunk_counts) - len(counts))))
    counts[:len(chunk_counts)] += chunk_counts
  return counts


def _store(cached: pathlib.Path, counts: np.ndarray) -> None:
  try:
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.tmp")
    with open(partial, "wb") as f:
      np.save(f, counts)
    os.replace(partial, cached)
  except OSError:  # an unwritable cache only costs a recount next time
    pass


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """Segments sampled as windows of `seq_len + 1` tokens, each window equally likely."""
  segments: tuple[Segment, ...]
  seq_len: int

  @functools.cached_property
  def _window_ends(self) -> np.ndarray:
    """Cumulative number of window starts over the segments."""
    return np.cumsum([max(0, len(s) - self.seq_len) for s in self.segments])

  @property
  def num_tokens(self) -> int:
    return sum(len(s) for s in self.segments)

  def check_windows(self, split_name: str) -> None:
    if self._window_ends[-1] == 0:
      longest = max(self.segments, key=len)
      raise UsageError(f"data.seq_len={self.seq_len} is too long for the {split_name} tokens: "
                       f"the longest, in {longest.path}, has {len(longest)}; lower data.seq_len "
                       f"below {len(longest)} or use longer shards")

  def windows(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
    """`batch_size` random windows: inputs and next-token targets, both int32 [B, L]."""
    ends = self._window_ends
    picks = rng.integers(0, ends[-1], size=batch_size)
    which = np.searchsorted(ends, picks, side="right")
    offsets = picks - np.concatenate([[0], ends[:-1]])[which]
    windows_BxL1 = np.stack([
        self.segments[w].tokens[self.segments[w].start + o:][:self.seq_len + 1]
        for w, o in zip(which, offsets)
    ]).astype(np.int32)
    return {"inputs": windows_BxL1[:, :-1], "targets": windows_BxL1[:, 1:]}

  def counts(self, vocab_size: int) -> np.ndarray:
    return sum(token_counts(s, vocab_size) for s in self.segments)


@dataclasses.dataclass(frozen=True, eq=False)
class TokenCorpus:
  """Train and validation splits of the shards at one `data.path`."""
  train: Split
  validation: Split
  vocab_size: int
  held_out_tokens: int  # taken from the train shards' tail; 0 when there are val shards

  @functools.cached_property
  def unigram_entropy(self) -> float:
    """Cross-entropy (nats/token) of validation under train token frequencies (+1 smoothed)."""
    train = self.train.counts(self.vocab_size).astype(np.float64) + 1.0
    validation = self.validation.counts(self.vocab_size).astype(np.float64)
    log_probs = np.log(train / train.sum())
    return float(-(validation * log_probs).sum() / validation.sum())


def _held_out_tail(segments: list[Segment], num_tokens: int) -> tuple[list[Segment],
                                                                       list[Segment]]:
  """The segments split into (all but the last `num_tokens` tokens, those tokens)."""
  train, tail, left = list(segments), [], num_tokens
  while left:
    last = train.pop()
    take = min(left, len(last))
    tail.insert(0, Segment(last.path, last.layout, last.stop - take, last.stop))
    if take < len(last):
      train.append(Segment(last.path, last.layout, last.start, last.stop - take))
    left -= take
  return train, tail


def load_corpus(path: str, *, vocab_size: int, seq_len: int, holdout_tokens: int) -> TokenCorpus:
  """Opens the shards at `path` and checks them: sizes, headers, token range, window length.

  `holdout_tokens` is the least validation tail held out when there are no val shards.
  """
  if not isinstance(vocab_size, int) or vocab_size <= 0:
    raise UsageError(f"data.vocab_size={vocab_size!r} must be > 0 for data.name='tokens': the "
                     "tokenizer's vocabulary (50257 for GPT-2, 256 for bytes); set "
                     "--config.data.vocab_size")
  files = find_shards(path)
  layouts = [(p, shard_layout(p)) for p in files]
  segments = [Segment(p, layout, 0, layout.count) for p, layout in layouts]
  train = [s for s in segments if not is_validation_shard(s.path)]
  validation = [s for s in segments if is_validation_shard(s.path)]
  if not train:
    raise UsageError(f"data.path={path!r} holds only validation shards "
                     f"({', '.join(s.path.name for s in validation)}); add train shards")
  Split(tuple(train), seq_len).check_windows("train")
  held_out = 0
  if not validation:
    total = sum(len(s) for s in train)
    held_out = max(math.ceil(HOLDOUT_FRACTION * total), holdout_tokens)
    if 2 * held_out > total:
      raise UsageError(f"data.path={path!r} has no val shards and {total} train tokens, too few "
                       f"to hold out {held_out} for validation; add a val shard (a file named "
                       "val*.bin) or lower batch_size, data.seq_len or eval.num_batches")
    train, validation = _held_out_tail(train, held_out)
  corpus = TokenCorpus(Split(tuple(train), seq_len), Split(tuple(validation), seq_len),
                       vocab_size, held_out)
  corpus.train.check_windows("train")
  corpus.validation.check_windows("validation")
  corpus.train.counts(vocab_size)  # the range check; also warms the baseline's counts
  corpus.validation.counts(vocab_size)
  return corpus
