"""A multilayer perceptron classifier over flattened inputs."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn


class MLP(nn.Module):
  """Flattens [B, ...] inputs, applies ReLU hidden layers, returns logits [B, num_classes]."""
  num_classes: int = 10
  hidden_sizes: Sequence[int] = (256, 256)

  @nn.compact
  def __call__(self, inputs_BxHxWxC):
    x_BxF = inputs_BxHxWxC.reshape(inputs_BxHxWxC.shape[0], -1)
    for i, width in enumerate(self.hidden_sizes):
      x_BxF = nn.relu(nn.Dense(
          width, name=f"hidden_{i}",
          kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                   ("embed", "mlp")),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))(x_BxF))
    return nn.Dense(
        self.num_classes, name="classifier",
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                 ("mlp", "classes")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("classes",)))(x_BxF)
