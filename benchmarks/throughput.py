"""Training throughput: tokens/s of trainlab's train step against peers' steps for the same
model, batch and dtype, on this machine's CPU.

Ours: `Trainer(build_run(config)).train_step` on `experiments/lm.py:size=SIZE` (GPT-2-style:
pre-LayerNorm, learned positions, tied embeddings, bias-free projections, tanh GELU, AdamW with
global-norm clipping at 1.0, float32), fed `trainer.device_batch(dataset.train_batch(step))` as
the loop feeds it. Peers, with no trainlab code:
- `flax`: the same decoder as a bare Flax linen module, `jax.jit(value_and_grad)`, optax
  `chain(clip_by_global_norm(1), adamw)`, donated state;
- `torch`: nanoGPT's model and step (karpathy/nanoGPT `model.py`: `scaled_dot_product_attention`
  with `is_causal=True`, `Linear(bias=False)`, `LayerNorm`; `train.py`: AdamW, `clip_grad_norm_`),
  eager (nanoGPT's `torch.compile` needs a C++ toolchain and minutes on CPU), float32. Needs
  `pip install -e '.[torch]'` (torch 2.13.0, the CPU wheel); skipped with a note without it.
Each round times every implementation on the same host batches (random tokens drawn once),
after warm-up steps, in turn in this process, so machine noise falls on all of them.

    python -m benchmarks.throughput [--size tiny] [--steps 20] [--warmup 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import lm
from trainlab.training.run import build_run
from trainlab.training.trainer import Trainer


class PeerBlock(nn.Module):
  heads: int

  @nn.compact
  def __call__(self, x):
    b, l, d = x.shape
    init = nn.initializers.normal(0.02)
    h = nn.LayerNorm()(x)
    q, k, v = (nn.DenseGeneral((self.heads, d // self.heads), use_bias=False, kernel_init=init)(h)
               for _ in range(3))
    att = jnp.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(d // self.heads)
    att = jnp.where(jnp.tril(jnp.ones((l, l), bool)), att, -jnp.inf)
    out = jnp.einsum("bhqs,bshk->bqhk", jax.nn.softmax(att, axis=-1), v)
    x = x + nn.DenseGeneral(d, axis=(-2, -1), use_bias=False, kernel_init=init)(out)
    h = nn.Dense(4 * d, use_bias=False, kernel_init=init)(nn.LayerNorm()(x))
    return x + nn.Dense(d, use_bias=False, kernel_init=init)(nn.gelu(h))


class PeerGPT(nn.Module):
  vocab: int
  layers: int
  d_model: int
  heads: int
  context: int

  @nn.compact
  def __call__(self, tokens):
    embed = nn.Embed(self.vocab, self.d_model, embedding_init=nn.initializers.normal(0.02))
    positions = self.param("positions", nn.initializers.normal(0.02),
                           (self.context, self.d_model))
    x = embed(tokens) + positions[:tokens.shape[1]]
    for _ in range(self.layers):
      x = PeerBlock(self.heads)(x)
    return embed.attend(nn.LayerNorm()(x))


def flax_peer(shape: dict, lr: float):
  model = PeerGPT(shape["vocab"], shape["layers"], shape["d_model"], shape["heads"],
                  shape["seq_len"])
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(lr, b1=0.9, b2=0.95, weight_decay=0.1))
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, shape["seq_len"]), jnp.int32))
  state = (params, tx.init(params))

  def loss_fn(params, inputs, targets):
    logits = model.apply(params, inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  def step(state, inputs, targets):
    params, opt_state = state
    loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  step = jax.jit(step, donate_argnums=0)
  holder = {"state": state}

  def run(batch):
    holder["state"], loss = step(holder["state"], batch["inputs"], batch["targets"])
    return loss

  count = sum(x.size for x in jax.tree.leaves(params))
  return run, lambda: jax.block_until_ready(holder["state"]), count


def torch_peer(shape: dict, lr: float):
  import torch
  from torch import nn as tnn
  from torch.nn import functional as F
  torch.manual_seed(0)
  d, heads = shape["d_model"], shape["heads"]

  class Block(tnn.Module):
    def __init__(self):
      super().__init__()
      self.ln_1, self.ln_2 = tnn.LayerNorm(d), tnn.LayerNorm(d)
      self.c_attn = tnn.Linear(d, 3 * d, bias=False)
      self.c_proj = tnn.Linear(d, d, bias=False)
      self.c_fc = tnn.Linear(d, 4 * d, bias=False)
      self.mlp_proj = tnn.Linear(4 * d, d, bias=False)

    def forward(self, x):
      b, l, _ = x.shape
      q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
      q, k, v = (t.view(b, l, heads, d // heads).transpose(1, 2) for t in (q, k, v))
      y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
      x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, l, d))
      return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

  class GPT(tnn.Module):
    def __init__(self):
      super().__init__()
      self.wte = tnn.Embedding(shape["vocab"], d)
      self.wpe = tnn.Embedding(shape["seq_len"], d)
      self.blocks = tnn.ModuleList(Block() for _ in range(shape["layers"]))
      self.ln_f = tnn.LayerNorm(d)
      for p in self.parameters():
        if p.dim() >= 2:
          tnn.init.normal_(p, std=0.02)

    def forward(self, tokens):
      x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1]))
      for block in self.blocks:
        x = block(x)
      return self.ln_f(x) @ self.wte.weight.T  # tied, as nanoGPT's lm_head

  model = GPT()
  optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)

  def run(batch):
    inputs, targets = (torch.from_numpy(np.asarray(batch[k], np.int64))
                       for k in ("inputs", "targets"))
    logits = model(inputs)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss

  return run, lambda: None, sum(p.numel() for p in model.parameters())


def ours(trainer: Trainer):
  holder = {"state": trainer.init_state()}

  def run(batch):
    holder["state"], metrics = trainer.train_step(holder["state"], trainer.device_batch(batch))
    return metrics["train_loss"]

  count = sum(x.size for x in jax.tree.leaves(trainer.abstract_state.params))
  return run, lambda: jax.block_until_ready(holder["state"]), count


def tokens_per_s(run, sync, batches, warmup: int, tokens: int) -> float:
  for batch in batches[:warmup]:
    run(batch)
  sync()
  start = time.perf_counter()
  for batch in batches[warmup:]:
    run(batch)
  sync()
  return tokens * (len(batches) - warmup) / (time.perf_counter() - start)


def cpu_busy() -> tuple[int, int]:
  with open("/proc/stat") as f:
    fields = [int(x) for x in f.readline().split()[1:]]
  return sum(fields) - fields[3] - fields[4], sum(fields)  # busy, total (idle+iowait excluded)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="tiny", choices=list(lm.SIZES))
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  config = lm.get_config(f"size={args.size}")
  config.total_steps = 10**6  # the schedule's warmup stays tiny for every timed step
  trainer = Trainer(build_run(config))
  dataset, m = trainer.run.dataset, config.model
  shape = dict(vocab=dataset.num_classes, layers=m.num_layers, d_model=m.d_model,
               heads=m.num_heads, seq_len=config.data.seq_len)
  lr = config.optimizer.learning_rate
  impls = {"trainlab": ours(trainer), "flax": flax_peer(shape, lr)}
  try:
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    impls["torch"] = torch_peer(shape, lr)
  except ImportError:
    print("torch is not installed (pip install -e '.[torch]'): the PyTorch peer is skipped")
  batches = [dataset.train_batch(s) for s in range(args.warmup + args.steps)]
  tokens = config.batch_size * config.data.seq_len
  results = {name: [] for name in impls}
  load_start, busy_start = os.getloadavg(), cpu_busy()
  for r in range(args.rounds):
    for name, (run, sync, _) in impls.items():
      results[name].append(tokens_per_s(run, sync, batches, args.warmup, tokens))
    print(f"round {r}: " + ", ".join(f"{n} {v[-1]:,.0f} tok/s" for n, v in results.items()),
          flush=True)
  busy_end = cpu_busy()
  share = (busy_end[0] - busy_start[0]) / max(busy_end[1] - busy_start[1], 1)
  print(f"\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} "
        f"CPUs, load average {load_start[0]:.2f} at start and {os.getloadavg()[0]:.2f} at end, "
        f"CPU busy {share:.0%} during the rounds (all processes); size {args.size}, "
        f"{tokens} tokens per step, float32")
  best = {n: statistics.median(v) for n, v in results.items()}
  print("| step | parameters | tokens/s (median of rounds) | trainlab / this |\n|---|---|---|---|")
  for name, value in best.items():
    print(f"| {name} | {impls[name][2]:,} | {value:,.0f} | {best['trainlab'] / value:.2f} |")


if __name__ == "__main__":
  main()
