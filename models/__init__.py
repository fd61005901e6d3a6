"""Flax modules only: a GPT, a LLaMA-style decoder, an MLP and a small CNN, built by name from
config fields."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from trainlab.models.cnn import CNN
from trainlab.models.gpt import GPT
from trainlab.models.llama import Llama
from trainlab.models.mlp import MLP

MODELS: dict[str, type[nn.Module]] = {"gpt": GPT, "llama": Llama, "mlp": MLP, "cnn": CNN}


def make_model(name: str, **kwargs: Any) -> nn.Module:
  """The model class registered as `name`, constructed with `kwargs` (its dataclass fields)."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
  return MODELS[name](**kwargs)
