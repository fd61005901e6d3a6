"""Token shards: both formats, step-indexed windows, validation, bad shards, prepare_tokens."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from trainlab.data import make_dataset, tokens
from trainlab.errors import UsageError
from launch import prepare_tokens

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
  """Each test counts tokens afresh, in its own on-disk cache."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  monkeypatch.setattr(tokens, "_COUNTS", {})


def _fineweb_bytes(tokens_N: np.ndarray, magic=20240520, version=1, dtype="<u2", count=None):
  """A shard as llm.c's `write_datafile` lays it out (dev/data/data_common.py, f1e2ace6)."""
  header = np.zeros(256, "<i4")
  header[0], header[1], header[2] = magic, version, len(tokens_N) if count is None else count
  return header.tobytes() + np.asarray(tokens_N, dtype).tobytes()


def _dataset(path, **kwargs):
  args = dict(seed=0, batch_size=4, seq_len=8, eval_batches=2, path=str(path), vocab_size=1000)
  return make_dataset("tokens", **{**args, **kwargs})


def _all_windows(dataset, steps):
  return np.concatenate([dataset.train_batch(s)["inputs"] for s in range(steps)])


def test_both_formats_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  small, large = rng.integers(0, 2**16, 500), rng.integers(0, 2**20, 300)
  (tmp_path / "gpt2.bin").write_bytes(_fineweb_bytes(small))
  (tmp_path / "llama.bin").write_bytes(_fineweb_bytes(large, 20240801, 7, "<u4"))
  (tmp_path / "flat.bin").write_bytes(small.astype("<u2").tobytes())
  np.testing.assert_array_equal(tokens.open_shard(tmp_path / "gpt2.bin"), small)
  np.testing.assert_array_equal(tokens.open_shard(tmp_path / "llama.bin"), large)
  np.testing.assert_array_equal(tokens.open_shard(tmp_path / "flat.bin"), small)
  assert isinstance(tokens.open_shard(tmp_path / "gpt2.bin"), np.memmap)
  # Our writer produces exactly those bytes.
  tokens.write_shard(tmp_path / "w1.bin", small)
  tokens.write_shard(tmp_path / "w2.bin", large)
  tokens.write_shard(tmp_path / "w3.bin", small, fmt="bin")
  for ours, theirs in [("w1", "gpt2"), ("w2", "llama"), ("w3", "flat")]:
    assert (tmp_path / f"{ours}.bin").read_bytes() == (tmp_path / f"{theirs}.bin").read_bytes()


def test_windows_are_slices_of_the_shards_and_follow_their_targets(tmp_path):
  shard = np.arange(3000) % 997
  (tmp_path / "train.bin").write_bytes(shard.astype("<u2").tobytes())
  batch = _dataset(tmp_path / "train.bin", batch_size=16).train_batch(5)
  assert batch["inputs"].shape == (16, 8) and batch["inputs"].dtype == np.int32
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  for row_inputs, row_targets in zip(batch["inputs"], batch["targets"]):
    start = int(np.flatnonzero(shard == row_inputs[0])[0])
    np.testing.assert_array_equal(row_inputs, shard[start:start + 8])
    np.testing.assert_array_equal(row_targets, shard[start + 1:start + 9])
  np.testing.assert_array_equal(batch["weights"], np.ones((16, 8), np.float32))


def test_train_batch_is_a_pure_function_of_seed_and_step(tmp_path):
  rng = np.random.default_rng(1)
  for i in range(3):
    (tmp_path / f"fineweb_train_{i:06d}.bin").write_bytes(_fineweb_bytes(rng.integers(0, 1000,
                                                                                      2000)))
  a, b = _dataset(tmp_path, seed=3), _dataset(tmp_path, seed=3)
  np.testing.assert_array_equal(a.train_batch(7)["inputs"], b.train_batch(7)["inputs"])
  np.testing.assert_array_equal(a.train_batch(7)["inputs"], a.train_batch(7)["inputs"])
  assert not np.array_equal(a.train_batch(7)["inputs"], a.train_batch(8)["inputs"])
  other = _dataset(tmp_path, seed=4)
  assert not np.array_equal(a.train_batch(7)["inputs"], other.train_batch(7)["inputs"])
  for x, y in zip(a.eval_batches(), other.eval_batches()):
    np.testing.assert_array_equal(x["inputs"], y["inputs"])
  assert len(a.eval_batches()) == 2


def test_windows_come_from_every_shard_in_proportion_to_its_windows(tmp_path):
  # Shard "a" holds ids 0..99, shard "b" ids 100..199; b has 3x the tokens.
  rng = np.random.default_rng(2)
  (tmp_path / "a.bin").write_bytes(_fineweb_bytes(rng.integers(0, 100, 1008)))
  (tmp_path / "b.bin").write_bytes(_fineweb_bytes(rng.integers(100, 200, 3008)))
  (tmp_path / "val.bin").write_bytes(_fineweb_bytes(rng.integers(0, 200, 100)))
  windows = _all_windows(_dataset(tmp_path, vocab_size=200, batch_size=64), 100)
  from_b = windows[:, 0] >= 100
  assert ((windows >= 100) == from_b[:, None]).all()  # no window crosses a shard boundary
  expected = (3008 - 8) / (1008 - 8 + 3008 - 8)  # windows of b over all windows
  assert abs(from_b.mean() - expected) < 0.03  # 6400 draws: 3 standard deviations ~ 0.016


def test_validation_comes_from_val_shards_when_there_are_some(tmp_path):
  rng = np.random.default_rng(3)
  tokens.write_shard(tmp_path / "fineweb_train_000000.bin", rng.integers(0, 500, 4000))
  tokens.write_shard(tmp_path / "fineweb_val_000000.bin", rng.integers(500, 1000, 1000))
  dataset = _dataset(tmp_path)
  assert dataset.train_size == 4000
  assert (_all_windows(dataset, 50) < 500).all()
  assert all((b["inputs"] >= 500).all() for b in dataset.eval_batches())
  # nanoGPT's names work the same way, and a glob picks its files.
  (tmp_path / "nano").mkdir()
  tokens.write_shard(tmp_path / "nano" / "train.bin", rng.integers(0, 500, 4000), fmt="bin")
  tokens.write_shard(tmp_path / "nano" / "val.bin", rng.integers(500, 1000, 1000), fmt="bin")
  dataset = _dataset(tmp_path / "nano" / "*.bin")
  assert (_all_windows(dataset, 50) < 500).all()
  assert all((b["inputs"] >= 500).all() for b in dataset.eval_batches())


@pytest.mark.parametrize("sizes", [(20000,), (19500, 500)])  # the tail spans one or two shards
def test_without_val_shards_a_tail_is_held_out_and_never_trained_on(tmp_path, sizes):
  # Each token is its own position, so a window tells where it came from.
  position = np.arange(sum(sizes))
  for i, (lo, hi) in enumerate(zip(np.cumsum((0, *sizes))[:-1], np.cumsum(sizes))):
    tokens.write_shard(tmp_path / f"part{i}.bin", position[lo:hi], fmt="bin")
  dataset = _dataset(tmp_path, vocab_size=20000, batch_size=16, seq_len=8, eval_batches=4)
  held_out = max(200, 4 * 16 * 9)  # 1% of 20000 tokens, or the eval windows' tokens
  cut = 20000 - held_out
  assert dataset.train_size == cut
  windows = _all_windows(dataset, 400)
  assert windows.max() + 1 < cut  # +1: the targets' last token is in the train part too
  targets = np.concatenate([dataset.train_batch(s)["targets"] for s in range(400)])
  assert targets.max() < cut and targets.max() > cut - 50  # and the train part is used to its end
  for batch in dataset.eval_batches():
    assert (batch["inputs"] >= cut).all()


def test_baseline_is_the_unigram_cross_entropy_of_validation_under_train(tmp_path, monkeypatch):
  monkeypatch.setattr(tokens, "_CHUNK_TOKENS", 777)  # stream in several uneven chunks
  rng = np.random.default_rng(4)
  train = [rng.zipf(1.5, 3000) % 50, rng.zipf(1.3, 2000) % 50]
  val = rng.zipf(1.4, 1500) % 50
  tokens.write_shard(tmp_path / "t0.bin", train[0])
  tokens.write_shard(tmp_path / "t1.bin", train[1], fmt="bin")
  tokens.write_shard(tmp_path / "val.bin", val)
  counts = np.bincount(np.concatenate(train), minlength=64).astype(np.float64) + 1.0
  expected = -np.log(counts / counts.sum())[val].mean()
  assert _dataset(tmp_path, vocab_size=64).baseline_loss == pytest.approx(expected, rel=1e-12)


def test_counts_are_cached_on_disk_and_refreshed_when_a_shard_changes(tmp_path, monkeypatch):
  shard = tmp_path / "train.bin"
  tokens.write_shard(shard, np.arange(2000) % 300)
  first = _dataset(shard, vocab_size=300).baseline_loss
  monkeypatch.setattr(tokens, "_COUNTS", {})
  monkeypatch.setattr(tokens, "_count", lambda *a: pytest.fail("recounted a cached shard"))
  assert _dataset(shard, vocab_size=300).baseline_loss == first
  with pytest.raises(UsageError, match=r"train\.bin holds token id 299 >= data\.vocab_size=200"):
    _dataset(shard, vocab_size=200)  # the range check reads the cached counts
  monkeypatch.undo()
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  monkeypatch.setattr(tokens, "_COUNTS", {})
  tokens.write_shard(shard, np.arange(2000) % 100)  # same size, new contents
  os.utime(shard, ns=(1, 1))
  assert _dataset(shard, vocab_size=100).baseline_loss < first  # recounted: ids now fit in 100


def _bad(tmp_path, name: str, raw: bytes) -> pathlib.Path:
  (tmp_path / name).write_bytes(raw)
  return tmp_path / name


GOOD = np.arange(600) % 50
BAD_SHARDS = {
    "empty": (b"", "is empty"),
    "unknown magic": (_fineweb_bytes(GOOD, magic=12345), "unknown magic 12345"),
    "wrong version": (_fineweb_bytes(GOOD, version=2), "version 2 for magic 20240520"),
    "truncated": (_fineweb_bytes(GOOD)[:-10], "truncated: the header says 600 tokens"),
    "too long": (_fineweb_bytes(GOOD) + b"\0\0", "longer than its header says"),
    "count mismatch": (_fineweb_bytes(GOOD, count=700), "truncated: the header says 700"),
    "no tokens": (_fineweb_bytes(GOOD[:0]), "holds no tokens"),
    "cut header": (_fineweb_bytes(GOOD)[:100], "truncated inside its 1024-byte header"),
    "odd flat": (GOOD.astype("<u2").tobytes()[:-1], "odd size"),
    "token id too large": (_fineweb_bytes(np.append(GOOD, 50)), "holds token id 50 >= "),
}


@pytest.mark.parametrize("case", sorted(BAD_SHARDS))
def test_bad_shards_name_the_file_and_the_fix(tmp_path, case):
  raw, message = BAD_SHARDS[case]
  tokens.write_shard(tmp_path / "fine_000.bin", GOOD)
  path = _bad(tmp_path, "broken_001.bin", raw)
  with pytest.raises(UsageError, match=message) as error:
    _dataset(tmp_path, vocab_size=50)
  assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("setup, kwargs, message", [
    ("", dict(path="DIR/nothing-*.bin"), "matches no token shards"),
    ("", dict(path="DIR"), "matches no token shards"),
    ("", dict(path="DIR/missing.bin"), "matches no token shards"),
    ("", dict(path=""), "data.path is empty"),
    ("train", dict(vocab_size=0), r"data.vocab_size=0 must be > 0"),
    ("train", dict(vocab_size=None), r"data.vocab_size=None must be > 0"),
    ("train", dict(seq_len=0), "data.seq_len must be > 0"),
    ("train", dict(seq_len=600), r"too long for the train tokens: the longest, in .*a\.bin"),
    ("val", dict(seq_len=300), r"too long for the validation tokens: .*val\.bin, has 200"),
    ("val-only", dict(), r"holds only validation shards \(val\.bin\)"),
    ("small", dict(batch_size=64), "too few to hold out"),
])
def test_bad_data_settings(tmp_path, setup, kwargs, message):
  if setup in ("train", "val", "small"):
    tokens.write_shard(tmp_path / "a.bin", GOOD[:500 if setup != "small" else 100])
  if setup in ("val", "val-only"):
    tokens.write_shard(tmp_path / "val.bin", GOOD[:200])
  path = kwargs.pop("path", "DIR").replace("DIR", str(tmp_path))
  with pytest.raises(UsageError, match=message):
    _dataset(path, **{"vocab_size": 50, **kwargs})


# --- launch.prepare_tokens ---------------------------------------------------------------------

DOCUMENTS = {
    "a.txt": "The quick brown fox jumps over the lazy dog.\n",
    "notes/b.md": "# Notes\n\nUnicode: café, naïve, 日本語.\n",
    "notes/deep/c.py": "def f(x):\n  return x + 1\n",
    "d.rst": "A literal <|endoftext|> inside a document stays text.\n",
    "e.txt": "Short.",
}
IGNORED = {"skip.json": "{}", ".hidden/x.txt": "hidden", "notes/.y.txt": "hidden", "f.bin": "x"}


def _input_dir(tmp_path: pathlib.Path) -> pathlib.Path:
  root = tmp_path / "input"
  for name, content in {**DOCUMENTS, **IGNORED}.items():
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(content, encoding="utf-8")
  return root


def _documents(out: pathlib.Path, split: str, end_of_text: int, fmt: str) -> list[np.ndarray]:
  """The documents of `split`, cut at the end-of-text token, from the shards themselves."""
  stream = np.concatenate([tokens.open_shard(p) for p in sorted(out.glob("*.bin"))
                           if (split == "val") == tokens.is_validation_shard(p)])
  docs = np.split(stream, np.flatnonzero(stream == end_of_text))
  docs = [d[1:] if d[:1].tolist() == [end_of_text] else d for d in docs]
  if fmt == "fineweb":
    assert stream[0] == end_of_text and len(docs[0]) == 0  # it comes before each document
    return docs[1:]
  assert stream[-1] == end_of_text and len(docs[-1]) == 0  # it comes after each document
  return docs[:-1]


@pytest.mark.parametrize("fmt", ["fineweb", "bin"])
def test_prepare_bytes_writes_shards_that_decode_to_the_input(tmp_path, fmt, capsys):
  root = _input_dir(tmp_path)
  extra = ["--shard-tokens", "50"] if fmt == "fineweb" else []
  argv = [str(root), str(tmp_path / "out"), "--format", fmt, "--val-fraction", "0.4", *extra]
  assert prepare_tokens.main(argv) == 0
  printed = capsys.readouterr().out
  assert (f"--config.data.name=tokens --config.data.path={tmp_path / 'out'} "
          "--config.data.vocab_size=256") in printed
  names = sorted(p.name for p in (tmp_path / "out").iterdir())
  if fmt == "fineweb":
    assert sum(n.startswith("fineweb_train_") for n in names) > 2
    assert all(len(tokens.open_shard(tmp_path / "out" / n)) <= 50 for n in names)
  else:
    assert names == ["train.bin", "val.bin"]
  texts = {s: [bytes(d.astype(np.uint8)).decode() for d in _documents(tmp_path / "out", s, 0,
                                                                         fmt)]
           for s in ("train", "val")}
  assert len(texts["val"]) == 2  # round(0.4 * 5)
  assert sorted(texts["train"] + texts["val"]) == sorted(DOCUMENTS.values())
  prepare_tokens.main([*argv[:1], str(tmp_path / "again"), *argv[2:]])
  for name in names:  # deterministic output
    assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
  # The shards train: a dataset opens them with the printed flags.
  dataset = make_dataset("tokens", seed=0, batch_size=2, seq_len=4, eval_batches=1,
                         path=str(tmp_path / "out"), vocab_size=256)
  assert dataset.train_size == sum(len(d.encode()) + 1 for d in texts["train"])


def _train_tokenizer(path: pathlib.Path, special_tokens: list[str]) -> None:
  import tokenizers  # pylint: disable=import-outside-toplevel  # the dev extra installs it
  from tokenizers import (  # pylint: disable=import-outside-toplevel
      decoders, models, pre_tokenizers, trainers)
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=special_tokens,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator([*DOCUMENTS.values(), "the fox and the dog"] * 3, trainer)
  tokenizer.save(str(path))


def test_prepare_with_a_tokenizer_json_decodes_back_to_the_input(tmp_path, capsys):
  import tokenizers  # pylint: disable=import-outside-toplevel
  _train_tokenizer(tmp_path / "tokenizer.json", ["<|pad|>", "<|endoftext|>"])
  tokenizer = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
  end_of_text, vocab_size = tokenizer.token_to_id("<|endoftext|>"), tokenizer.get_vocab_size()
  root, out = _input_dir(tmp_path), tmp_path / "out"
  prepare_tokens.main([str(root), str(out), "--tokenizer", str(tmp_path / "tokenizer.json"),
                       "--val-fraction", "0.2"])
  assert f"--config.data.vocab_size={vocab_size}" in capsys.readouterr().out
  texts = [tokenizer.decode(d.tolist(), skip_special_tokens=False)
           for s in ("train", "val") for d in _documents(out, s, end_of_text, "fineweb")]
  assert sorted(texts) == sorted(DOCUMENTS.values())
  assert make_dataset("tokens", seed=0, batch_size=2, seq_len=4, eval_batches=1, path=str(out),
                      vocab_size=vocab_size).num_classes == vocab_size


def test_prepare_rejects_bad_input_in_one_line(tmp_path, monkeypatch):
  root = _input_dir(tmp_path)
  cases = [
      ([str(tmp_path / "nope"), str(tmp_path / "o1")], "is not a folder"),
      ([str(root / "notes" / "deep" / "c.py"), str(tmp_path / "o1")], "is not a folder"),
      ([str(root), str(tmp_path / "o1"), "--val-fraction", "1.5"], r"must be in \[0, 1\)"),
      ([str(root), str(tmp_path / "o1"), "--format", "bin", "--shard-tokens", "9"],
       "--shard-tokens applies to --format fineweb"),
      ([str(root), str(tmp_path / "o1"), "--shard-tokens", "0"], "must be >= 1"),
      ([str(root), str(tmp_path / "o1"), "--format", "npy"], "invalid choice: 'npy'"),
      ([str(tmp_path / "o1")], "required: out_dir"),
      ([str(root), str(tmp_path / "o1"), "--tokenizer", str(tmp_path / "missing.json")],
       "cannot load it"),
  ]
  for argv, message in cases:
    with pytest.raises(UsageError, match=message):
      prepare_tokens.main(argv)
  prepare_tokens.main([str(root), str(tmp_path / "full")])
  with pytest.raises(UsageError, match="already holds .bin shards"):
    prepare_tokens.main([str(root), str(tmp_path / "full")])
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "data.json").write_text("{}")
  with pytest.raises(UsageError, match=r"has no text files \(\.txt"):
    prepare_tokens.main([str(tmp_path / "empty"), str(tmp_path / "o2")])
  (root / "nul.txt").write_bytes(b"a\0b")
  with pytest.raises(UsageError, match=r"nul\.txt contains a NUL byte"):
    prepare_tokens.main([str(root), str(tmp_path / "o3")])
  (root / "nul.txt").write_bytes(b"caf\xe9")
  _train_tokenizer(tmp_path / "tok.json", ["<|endoftext|>"])
  with pytest.raises(UsageError, match=r"nul\.txt is not UTF-8 text"):
    prepare_tokens.main([str(root), str(tmp_path / "o4"), "--tokenizer",
                         str(tmp_path / "tok.json")])
  (root / "nul.txt").unlink()
  _train_tokenizer(tmp_path / "no_eot.json", ["<|pad|>"])
  with pytest.raises(UsageError, match="has none of the end-of-text tokens"):
    prepare_tokens.main([str(root), str(tmp_path / "o5"), "--tokenizer",
                         str(tmp_path / "no_eot.json")])
  monkeypatch.setitem(__import__("sys").modules, "tokenizers", None)
  with pytest.raises(UsageError, match=r"pip install -e '\.\[tokenizers\]'"):
    prepare_tokens.main([str(root), str(tmp_path / "o6"), "--tokenizer",
                         str(tmp_path / "tok.json")])


def test_prepare_bad_input_exits_2_with_one_line(run_module, tmp_path):
  result = run_module("launch.prepare_tokens", str(tmp_path / "absent"), str(tmp_path / "out"))
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"error: INPUT_DIR {tmp_path / 'absent'} is not a folder; pass the folder of text files"]


# --- a launch.train run on prepared shards resumes bit-exactly after SIGKILL -------------------

# experiments/lm.py's data block has no `path` or `vocab_size` keys yet, so a config file that
# adds them (defaults "" and 0) lets the flags below set them as a user would.
TOKENS_CONFIG = '''
from experiments import lm

def get_config(arg=None):
  config = lm.get_config(arg)
  config.data.name = "tokens"
  config.data.path = ""
  config.data.vocab_size = 0
  return config
'''
RESUME_STEPS = 12


def _train(config: pathlib.Path, shards: pathlib.Path, workdir: pathlib.Path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  flags = [f"--config={config}:size=test", f"--config.data.path={shards}",
           "--config.data.vocab_size=256", f"--config.total_steps={RESUME_STEPS}",
           "--config.checkpoint.every_steps=2", "--config.log.every_steps=1",
           "--config.eval.every_steps=0", f"--workdir={workdir}"]
  return subprocess.Popen([sys.executable, "-m", "launch.train", *flags], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _metrics(workdir: pathlib.Path) -> list[dict]:
  path = workdir / "metrics.jsonl"
  lines = path.read_text().splitlines() if path.exists() else []
  return [json.loads(line) for line in lines if line.endswith("}")]


def test_a_run_on_prepared_shards_resumes_bit_exactly_after_sigkill(tmp_path):
  root = tmp_path / "input"
  root.mkdir()
  for name in ("README.md", "DEVELOPERS.md", "data/text.py"):
    (root / pathlib.Path(name).name).write_bytes((REPO / name).read_bytes())
  prepare_tokens.main([str(root), str(tmp_path / "shards"), "--val-fraction", "0.34"])
  config = tmp_path / "tokens_lm.py"
  config.write_text(TOKENS_CONFIG)
  reference = _train(config, tmp_path / "shards", tmp_path / "reference")
  stdout, stderr = reference.communicate(timeout=600)
  assert reference.returncode == 0, stderr[-2000:]
  expected = json.loads(stdout)

  killed = _train(config, tmp_path / "shards", tmp_path / "run")
  deadline = time.time() + 600
  while time.time() < deadline and killed.poll() is None:
    if _metrics(tmp_path / "run") and _metrics(tmp_path / "run")[-1]["step"] >= 3:
      killed.kill()
      break
    time.sleep(0.01)
  killed.communicate(timeout=600)
  assert killed.returncode == -signal.SIGKILL
  resumed = _train(config, tmp_path / "shards", tmp_path / "run")
  stdout, stderr = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, stderr[-2000:]
  assert json.loads(stdout)["params_sha256"] == expected["params_sha256"]
  losses = [m["train_loss"] for m in _metrics(tmp_path / "run")]
  assert losses == [m["train_loss"] for m in _metrics(tmp_path / "reference")]
  assert len(losses) == RESUME_STEPS
