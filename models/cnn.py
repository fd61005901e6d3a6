"""A small convolutional classifier: two conv + ReLU + 2x2 max-pool stages, then a dense head."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn


class CNN(nn.Module):
  """Maps images [B, H, W, C] to logits [B, num_classes]."""
  num_classes: int = 10
  channels: Sequence[int] = (16, 32)

  @nn.compact
  def __call__(self, images_BxHxWxC):
    x = images_BxHxWxC
    for i, width in enumerate(self.channels):
      x = nn.Conv(width, (3, 3), name=f"conv_{i}",
                  kernel_init=nn.with_logical_partitioning(
                      nn.initializers.lecun_normal(), (None, None, "conv_in", "conv_out")),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x_BxF = x.reshape(x.shape[0], -1)
    return nn.Dense(
        self.num_classes, name="classifier",
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                 ("embed", "classes")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("classes",)))(x_BxF)
