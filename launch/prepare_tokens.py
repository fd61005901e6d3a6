"""Tokenize text files into training shards: `python -m launch.prepare_tokens INPUT_DIR OUT_DIR`.

Options: `[--tokenizer tokenizer.json] [--format fineweb|bin] [--shard-tokens N]
[--val-fraction F]`.

- Input: every file under INPUT_DIR (recursively, hidden ones skipped) whose suffix is one of
  `TEXT_SUFFIXES`, in sorted path order; each file is one document.
- Tokens: bytes (vocabulary 256) without `--tokenizer`; with it, a Hugging Face `tokenizers`
  JSON file, loaded with `Tokenizer.from_file` (no download), UTF-8 text encoded with
  `add_special_tokens=False` and special-token strings inside a document encoded as text.
- End of text: documents are delimited by the tokenizer's `<|endoftext|>` (else `</s>`,
  `<|end_of_text|>` or `<eos>`; a tokenizer with none is refused), and by byte 0 (NUL) for bytes,
  so a NUL inside a text file is refused. `fineweb` puts it before each document, as
  modded-nanogpt's `data/fineweb.py` does; `bin` after, as nanoGPT's `prepare.py` does.
- Validation: `round(F * documents)` documents, picked by a permutation with a fixed seed, go to
  the val shards; when that is 0 there are none, and training holds out a tail instead.
- Output: `fineweb` (default) writes `fineweb_{train,val}_NNNNNN.bin` of `--shard-tokens` tokens
  each (llm.c's header; uint16, or uint32 for vocabularies above 65536); `bin` writes nanoGPT's
  `train.bin` and `val.bin` (flat uint16). OUT_DIR must hold no `.bin` files yet.

The same input and options always give byte-identical shards. It prints each file written, the
token counts, the vocabulary and the `--config.data.*` flags that train on the shards.
"""

from __future__ import annotations

import argparse
import io
import pathlib
import sys
from typing import Callable, Iterator

import numpy as np

from trainlab.data import tokens
from trainlab.errors import UsageError

TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst", ".py", ".tex")
END_OF_TEXT_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")
BYTES_END_OF_TEXT = 0
DEFAULT_SHARD_TOKENS = 10**8  # modded-nanogpt's shard size
_SPLIT_SEED = 0
_ENCODE_BATCH = 64


class _Parser(argparse.ArgumentParser):

  def error(self, message: str) -> None:  # one line, exit 2, like every entry point
    raise UsageError(f"{message} (see --help)")


def _parse(argv: list[str]) -> argparse.Namespace:
  parser = _Parser(prog="python -m launch.prepare_tokens", description=__doc__,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("input_dir", type=pathlib.Path, help="folder of text files (recursive)")
  parser.add_argument("out_dir", type=pathlib.Path, help="folder for the shards")
  parser.add_argument("--tokenizer", type=pathlib.Path, default=None,
                      help="Hugging Face tokenizer.json (default: bytes, vocabulary 256)")
  parser.add_argument("--format", choices=("fineweb", "bin"), default="fineweb",
                      help="fineweb: llm.c/modded-nanogpt shards; bin: nanoGPT train.bin/val.bin")
  parser.add_argument("--shard-tokens", type=int, default=None,
                      help=f"tokens per fineweb shard (default {DEFAULT_SHARD_TOKENS:,})")
  parser.add_argument("--val-fraction", type=float, default=0.01,
                      help="fraction of documents for validation (default 0.01)")
  args = parser.parse_args(argv)
  if not args.input_dir.is_dir():
    raise UsageError(f"INPUT_DIR {args.input_dir} is not a folder; pass the folder of text files")
  if not 0.0 <= args.val_fraction < 1.0:
    raise UsageError(f"--val-fraction {args.val_fraction} must be in [0, 1)")
  if args.shard_tokens is not None and args.format == "bin":
    raise UsageError("--shard-tokens applies to --format fineweb; nanoGPT's bin format is one "
                     "train.bin and one val.bin")
  if args.shard_tokens is not None and args.shard_tokens < 1:
    raise UsageError(f"--shard-tokens {args.shard_tokens} must be >= 1")
  return args


def find_documents(input_dir: pathlib.Path) -> list[pathlib.Path]:
  files = sorted((p for p in input_dir.rglob("*")
                  if p.is_file() and p.suffix in TEXT_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(input_dir).parts)),
                 key=lambda p: p.relative_to(input_dir).as_posix())
  if not files:
    raise UsageError(f"INPUT_DIR {input_dir} has no text files ({' '.join(TEXT_SUFFIXES)}); "
                     "pass a folder that holds some")
  return files


Encoder = Callable[[list[pathlib.Path]], list[np.ndarray]]


def byte_encoder() -> tuple[Encoder, int, int]:
  """Documents as their raw bytes: (encode, vocab_size, end-of-text id)."""

  def encode(paths: list[pathlib.Path]) -> list[np.ndarray]:
    docs = [np.frombuffer(p.read_bytes(), np.uint8) for p in paths]
    for p, doc in zip(paths, docs):
      if (doc == BYTES_END_OF_TEXT).any():
        raise UsageError(f"{p} contains a NUL byte, which byte shards use as the end-of-text "
                         "token; remove the file or pass --tokenizer")
    return docs

  return encode, 256, BYTES_END_OF_TEXT


def tokenizer_encoder(path: pathlib.Path) -> tuple[Encoder, int, int]:
  """Documents encoded by a `tokenizers` JSON file: (encode, vocab_size, end-of-text id)."""
  try:
    import tokenizers  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UsageError("--tokenizer needs the tokenizers package: pip install -e '.[tokenizers]' "
                     "(or pip install tokenizers)") from None
  try:
    tokenizer = tokenizers.Tokenizer.from_file(str(path))
  except Exception as e:  # pylint: disable=broad-except  # the library raises plain Exception
    detail = " ".join(str(e).split())[:200]
    raise UsageError(f"--tokenizer {path}: cannot load it ({detail}); pass a Hugging Face "
                     "tokenizer.json") from None
  end_of_text = next((i for name in END_OF_TEXT_NAMES
                      if (i := tokenizer.token_to_id(name)) is not None), None)
  if end_of_text is None:
    raise UsageError(f"--tokenizer {path} has none of the end-of-text tokens "
                     f"{' '.join(END_OF_TEXT_NAMES)}; add one as a special token")
  tokenizer.encode_special_tokens = True  # "<|endoftext|>" inside a document is plain text

  def encode(paths: list[pathlib.Path]) -> list[np.ndarray]:
    texts = []
    for p in paths:
      try:
        texts.append(p.read_bytes().decode("utf-8"))
      except UnicodeDecodeError as e:
        raise UsageError(f"{p} is not UTF-8 text ({e.reason} at byte {e.start}); fix or remove "
                         "it, or tokenize bytes (no --tokenizer)") from None
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    return [np.asarray(e.ids, np.int64) for e in encodings]

  return encode, tokenizer.get_vocab_size(with_added_tokens=True), end_of_text


class _ShardWriter:
  """Streams one split's tokens into shards of at most `shard_tokens` tokens (None: one file)."""

  def __init__(self, out_dir: pathlib.Path, split: str, fmt: str, dtype: np.dtype,
               shard_tokens: int | None):
    self.out_dir, self.split, self.fmt, self.dtype = out_dir, split, fmt, dtype
    self.shard_tokens = shard_tokens
    self.written: list[tuple[pathlib.Path, int]] = []
    self._file: io.BufferedWriter | None = None
    self._count = 0

  def _path(self) -> pathlib.Path:
    if self.fmt == "bin":
      return self.out_dir / f"{self.split}.bin"
    return self.out_dir / f"fineweb_{self.split}_{len(self.written):06d}.bin"

  def write(self, tokens_N: np.ndarray) -> None:
    while len(tokens_N):
      if self._file is None:
        partial = self._path().with_suffix(".partial")
        self._file = open(partial, "wb")  # pylint: disable=consider-using-with
        self._count = 0
        if self.fmt == "fineweb":
          self._file.write(tokens.shard_header(0, self.dtype))  # its count is filled in by close
      room = len(tokens_N) if self.shard_tokens is None else self.shard_tokens - self._count
      self._file.write(tokens_N[:room].astype(self.dtype).tobytes())
      self._count += min(room, len(tokens_N))
      tokens_N = tokens_N[room:]
      if self._count == self.shard_tokens:
        self.close()

  def close(self) -> None:
    if self._file is None:
      return
    if self.fmt == "fineweb":
      self._file.seek(0)
      self._file.write(tokens.shard_header(self._count, self.dtype))
    self._file.close()
    path = self._path()
    path.with_suffix(".partial").replace(path)
    self.written.append((path, self._count))
    self._file = None


def _batches(items: list[pathlib.Path], size: int) -> Iterator[list[pathlib.Path]]:
  for start in range(0, len(items), size):
    yield items[start:start + size]


def prepare(args: argparse.Namespace) -> dict[str, object]:
  """Writes the shards; returns what it wrote."""
  documents = find_documents(args.input_dir)
  encode, vocab_size, end_of_text = (tokenizer_encoder(args.tokenizer) if args.tokenizer
                                     else byte_encoder())
  if args.format == "bin" and vocab_size > 2**16:
    raise UsageError(f"vocabulary {vocab_size} does not fit nanoGPT's uint16 bin format; use "
                     "--format fineweb (llm.c's uint32 shards)")
  args.out_dir.mkdir(parents=True, exist_ok=True)
  if any(args.out_dir.glob("*.bin")):
    raise UsageError(f"OUT_DIR {args.out_dir} already holds .bin shards; choose an empty folder "
                     "or delete them first")
  num_val = round(args.val_fraction * len(documents))
  num_val = min(num_val, len(documents) - 1)
  order = np.random.default_rng(_SPLIT_SEED).permutation(len(documents))
  is_val = np.zeros(len(documents), bool)
  is_val[order[:num_val]] = True
  dtype = np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")
  shard_tokens = None if args.format == "bin" else (args.shard_tokens or DEFAULT_SHARD_TOKENS)
  writers = {split: _ShardWriter(args.out_dir, split, args.format, dtype, shard_tokens)
             for split in ("train", "val")}
  doc_counts = {"train": 0, "val": 0}
  eot = np.array([end_of_text], np.int64)
  for batch in _batches(list(range(len(documents))), _ENCODE_BATCH):
    for i, doc in zip(batch, encode([documents[i] for i in batch])):
      split = "val" if is_val[i] else "train"
      doc_counts[split] += 1
      parts = (eot, doc) if args.format == "fineweb" else (doc, eot)
      writers[split].write(np.concatenate(parts))
  for writer in writers.values():
    writer.close()
  return {"vocab_size": vocab_size, "end_of_text": end_of_text, "documents": doc_counts,
          "shards": {split: w.written for split, w in writers.items()}}


def main(argv: list[str]) -> int:
  args = _parse(argv)
  summary = prepare(args)
  for split in ("train", "val"):
    for path, count in summary["shards"][split]:
      print(f"wrote {path}: {count:,} tokens")
  for split in ("train", "val"):
    shards = summary["shards"][split]
    total = sum(count for _, count in shards)
    print(f"{split}: {len(shards)} shard(s), {total:,} tokens, "
          f"{summary['documents'][split]} document(s)")
  if not summary["shards"]["val"]:
    num_docs = sum(summary["documents"].values())
    print(f"no val shard (--val-fraction {args.val_fraction} of {num_docs} documents rounds to "
          "0): training holds out the train tokens' tail")
  source = f"tokenizer {args.tokenizer}" if args.tokenizer else "bytes"
  print(f"vocab_size {summary['vocab_size']} ({source}), end-of-text id {summary['end_of_text']}")
  print(f"train on it with: --config.data.name=tokens --config.data.path={args.out_dir} "
        f"--config.data.vocab_size={summary['vocab_size']}")
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main(sys.argv[1:]))
  except UsageError as e:
    from launch import cli  # pylint: disable=import-outside-toplevel  # (it imports JAX)
    cli.usage_error(str(e))
