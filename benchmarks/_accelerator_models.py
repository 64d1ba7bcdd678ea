"""The accelerator benchmark's workloads: models of real size and synthetic data of real shape.

* :class:`ResNet18`: the CIFAR ResNet-18 (a 3x3 stem, no max-pool, four stages of two basic
  blocks, BatchNorm after every convolution, 10 classes) on 32x32x3 images; 11.2M parameters
  at the usual widths 64-128-256-512.
* :class:`Transformer`: a decoder-only (GPT-style, pre-LayerNorm) transformer with causal
  self-attention, learned positions and a read-out tied to the token embedding, trained on
  next-token cross-entropy; about 10.6M parameters in its blocks (12.3M with the embeddings)
  at d_model 384, 6 layers, 6 heads, vocabulary 4096.
* the digits MLP (``jaxsweep.models.MLP``), the small end.

The data is made on the fly with numpy, nothing downloaded: images whose class is a smooth
pattern under noise, and token sequences from a random sparse Markov chain (each token has a
few likely successors), so every rate has something to learn and the losses tell rates apart.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# ----------------------------------------------------------------------------- ResNet-18


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm, and the shortcut (a 1x1 projection where the
    shape changes)."""

    channels: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
        conv = functools.partial(nn.Conv, use_bias=False)  # a normalisation follows each
        y = conv(self.channels, (3, 3), strides=self.strides)(x)
        y = nn.relu(norm()(y))
        y = norm()(conv(self.channels, (3, 3))(y))
        if x.shape[-1] != self.channels or self.strides != 1:
            x = norm()(conv(self.channels, (1, 1), strides=self.strides)(x))
        return nn.relu(x + y)


class ResNet18(nn.Module):
    """ResNet-18 for CIFAR-sized images: ``train=True`` normalises with the batch's statistics
    and updates the running averages (``batch_stats``), ``train=False`` reads them."""

    widths: Sequence[int] = (64, 128, 256, 512)
    blocks: int = 2  # per stage
    classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
        x = nn.Conv(self.widths[0], (3, 3), use_bias=False)(x)
        x = nn.relu(norm()(x))
        for stage, width in enumerate(self.widths):
            for block in range(self.blocks):
                x = BasicBlock(width, strides=2 if stage > 0 and block == 0 else 1)(x, train)
        return nn.Dense(self.classes)(jnp.mean(x, axis=(1, 2)))


def images(n: int, classes: int = 10, size: int = 32, seed: int = 0):
    """``n`` float32 images ``(n, size, size, 3)`` and int32 labels: each class a smooth
    random pattern (a 4x4 grid upsampled), under unit Gaussian noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(classes, 4, 4, 3)).astype(np.float32)
    patterns = np.repeat(np.repeat(coarse, size // 4, axis=1), size // 4, axis=2)
    y = rng.integers(0, classes, size=n).astype(np.int32)
    x = rng.standard_normal(size=(n, size, size, 3), dtype=np.float32)
    x += 0.5 * patterns[y]
    return x, y


# ----------------------------------------------------------------------------- transformer


class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention, then a GELU MLP (4x wide)."""

    heads: int

    @nn.compact
    def __call__(self, x, mask):
        width = x.shape[-1]
        attention = nn.MultiHeadDotProductAttention(
            num_heads=self.heads, qkv_features=width, deterministic=True
        )
        h = nn.LayerNorm()(x)
        x = x + attention(h, h, mask=mask)
        h = nn.Dense(4 * width)(nn.LayerNorm()(x))
        return x + nn.Dense(width)(nn.gelu(h))


class Transformer(nn.Module):
    """Decoder-only language model: tokens ``(batch, seq)`` -> next-token logits
    ``(batch, seq, vocab)``; the read-out is the token embedding's transpose."""

    vocab: int = 4096
    width: int = 384
    layers: int = 6
    heads: int = 6
    max_len: int = 256

    @nn.compact
    def __call__(self, tokens):
        embed = nn.Embed(self.vocab, self.width)
        positions = self.param(
            "positions", nn.initializers.normal(0.02), (self.max_len, self.width)
        )
        x = embed(tokens) + positions[: tokens.shape[-1]]
        mask = nn.make_causal_mask(tokens)
        for _ in range(self.layers):
            x = Block(self.heads)(x, mask)
        return embed.attend(nn.LayerNorm()(x))


def markov_tokens(n: int, seq: int, vocab: int, successors: int = 4, seed: int = 0):
    """``n`` sequences of a random sparse Markov chain: inputs ``(n, seq)`` and the next
    tokens ``(n, seq)`` as targets (int32). Each token is followed by one of ``successors``
    tokens drawn once per chain, with Dirichlet weights: a language a model can learn (its
    entropy is far below ``log(vocab)``) but not by heart."""
    rng = np.random.default_rng(seed)
    following = rng.integers(0, vocab, size=(vocab, successors))
    cumulative = np.cumsum(rng.dirichlet(np.ones(successors), size=vocab), axis=1)
    tokens = np.empty((n, seq + 1), np.int32)
    tokens[:, 0] = rng.integers(0, vocab, size=n)
    for t in range(seq):
        state = tokens[:, t]
        choice = (rng.random(n)[:, None] > cumulative[state]).sum(axis=1)
        tokens[:, t + 1] = following[state, np.minimum(choice, successors - 1)]
    return tokens[:, :-1], tokens[:, 1:]


def markov_entropy(vocab: int, successors: int = 4, seed: int = 0) -> float:
    """The chain's mean next-token entropy (nats), weighting every token alike: about the
    loss a perfect model reaches (its stationary weights differ a little)."""
    rng = np.random.default_rng(seed)
    rng.integers(0, vocab, size=(vocab, successors))  # the same draws as markov_tokens
    weights = rng.dirichlet(np.ones(successors), size=vocab)
    return float(-np.mean(np.sum(weights * np.log(weights), axis=1)))


# ----------------------------------------------------------------------------- counting


def parameter_counts(model_fn, x_example) -> dict[str, int]:
    """Trainable parameters (``params`` only: batch statistics are state), from shapes alone
    (``jax.eval_shape``: nothing is initialised), in total and per top-level module."""
    shapes = jax.eval_shape(lambda k: model_fn().init(k, x_example)["params"], jax.random.key(0))
    per_module = {
        name: int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))
        for name, tree in shapes.items()
    }
    return {"total": sum(per_module.values()), **per_module}
