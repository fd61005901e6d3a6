"""Verifiable integer arithmetic for RL: `a+b=` and `a*b=` with a wide spread of difficulty.

Problems are pure functions of `(seed, stream, index)`: the RL prompt pool, the held-out
prompts and the supervised warm-start examples are three independent streams of one seed.
Operand sizes are drawn per problem (`+`: 1 to `max_add_digits` digits each; `*`: 1 to
`max_mul_digits` digits each), so one-digit sums sit next to four-digit sums and two-digit
products. Answers are written least-significant digit first and end with `.`; a prompt is
left-padded with `_` to `prompt_len` so every answer starts at the same position.
"""

from __future__ import annotations

import dataclasses

import numpy as np

CHARS = "_0123456789+*=."
PAD, EOS = 0, CHARS.index(".")
VOCAB_SIZE = len(CHARS)
STREAMS = {"pool": 1, "heldout": 2, "sft": 3}


@dataclasses.dataclass(frozen=True)
class Problems:
  """A batch of problems as token arrays.

  prompts_NxP: left-padded prompt tokens; answers_NxA: answer tokens, EOS, then PAD;
  answer_len_N: answer digits plus one (the EOS).
  """
  prompts_NxP: np.ndarray
  answers_NxA: np.ndarray
  answer_len_N: np.ndarray
  text: tuple[str, ...]


def prompt_len(max_add_digits: int, max_mul_digits: int) -> int:
  return 2 * max(max_add_digits, max_mul_digits) + 2


def answer_len(max_add_digits: int, max_mul_digits: int) -> int:
  return max(max_add_digits + 1, 2 * max_mul_digits) + 1


def _encode(s: str) -> list[int]:
  return [CHARS.index(c) for c in s]


def make_problems(seed: int, stream: str, start: int, count: int, *, max_add_digits: int = 4,
                  max_mul_digits: int = 2, mul_fraction: float = 0.3) -> Problems:
  """Problems `start .. start + count - 1` of `stream` for `seed` (deterministic)."""
  p_len = prompt_len(max_add_digits, max_mul_digits)
  a_len = answer_len(max_add_digits, max_mul_digits)
  prompts = np.full((count, p_len), PAD, np.int32)
  answers = np.full((count, a_len), PAD, np.int32)
  lengths = np.zeros(count, np.int32)
  texts = []
  for row, index in enumerate(range(start, start + count)):
    rng = np.random.default_rng([seed, STREAMS[stream], index])
    is_mul = rng.random() < mul_fraction
    max_digits = max_mul_digits if is_mul else max_add_digits
    a, b = (int(rng.integers(10 ** (d - 1) if d > 1 else 0, 10**d))
            for d in rng.integers(1, max_digits + 1, size=2))
    prompt = f"{a}{'*' if is_mul else '+'}{b}="
    answer = str(a * b if is_mul else a + b)[::-1] + "."
    prompts[row, p_len - len(prompt):] = _encode(prompt)
    answers[row, :len(answer)] = _encode(answer)
    lengths[row] = len(answer)
    texts.append(prompt + answer)
  return Problems(prompts, answers, lengths, tuple(texts))


def is_correct(generated_NxA: np.ndarray, answers_NxA: np.ndarray,
               answer_len_N: np.ndarray) -> np.ndarray:
  """1.0 where the generation equals the answer up to and including its EOS, else 0.0."""
  checked_NxA = np.arange(answers_NxA.shape[1])[None, :] < answer_len_N[:, None]
  return np.all((generated_NxA == answers_NxA) | ~checked_NxA, axis=1).astype(np.float32)
