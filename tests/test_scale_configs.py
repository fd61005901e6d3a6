"""The paper-scale configs of `experiments/scale.py` build, and have the papers' sizes."""

from __future__ import annotations

import jax
import pytest

from experiments import scale
from trainlab.errors import UsageError
from trainlab.training import aot
from trainlab.training.run import build_run

# Parameter counts (millions) the models are named for, within about 2% (tied 50,304 x d
# embeddings; the 405M decoder unties them): nanoGPT's GPT-2 124M has 124.4M with this vocab.
EXPECTED_MILLIONS = {"gpt2-124m": (123, 126), "gpt2-355m": (350, 360), "wsd-124m": (121, 127),
                     "wsd-210m": (205, 214), "inflr-405m": (398, 414), "eco-210m": (205, 214),
                     "llama-1.3b": (1290, 1340)}


@pytest.mark.parametrize("model", sorted(scale.MODELS))
def test_scale_config_builds_with_the_papers_size(model):
  config = scale.get_config(f"model={model}")
  config.mesh.data = 1  # the shapes, on this host's one CPU device
  run = build_run(config, devices=jax.devices()[:1], dataset=aot.shapes_only_dataset(config))
  count = sum(x.size for x in jax.tree.leaves(run.variables["params"]))
  low, high = EXPECTED_MILLIONS[model]
  assert low * 1e6 <= count <= high * 1e6, (model, count)
  assert config.model.scan_layers and config.model.dtype == "bfloat16"


def test_unknown_model_or_slice_is_a_usage_error():
  with pytest.raises(UsageError, match="gpt2-124m"):
    scale.get_config("model=gpt5")
  with pytest.raises(UsageError, match="v5e:4x4"):
    scale.get_config("model=gpt2-124m,topology=v6e:16x16")
