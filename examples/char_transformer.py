"""A tiny character-level transformer (NNX, with dropout) on Shakespeare's sonnets: the best
AdamW rate.

Next-character prediction: each example is a window of ``context`` characters and the target
is the same window shifted by one, so the model predicts every position at once (causal
attention keeps it from looking ahead). Integer targets of shape ``(n, context)`` make the
built-in cross-entropy average over every position. The last tenth of the text is held out
for validation (passed as ``{"train": ..., "val": ...}``) so that overlapping windows never
leak between the two. Dropout draws from the model's own NNX RNG streams: every lane carries
them and draws a new mask at every step; validation runs in ``eval()`` mode, without dropout.

  python examples/char_transformer.py           # 5 stages of 5 rates, 3 epochs each
  python examples/char_transformer.py --quick   # tiny: seconds, mostly compiling
"""

from __future__ import annotations

import argparse
import functools
import math
from pathlib import Path

import numpy as np
import optax
from flax import nnx

import jaxsweep

TEXT = Path(__file__).parent / "data" / "sonnets.txt"


def windows(tokens: np.ndarray, context: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``tokens[i : i + context]`` and targets shifted by one, every ``stride`` chars."""
    starts = np.arange(0, len(tokens) - context - 1, stride)
    x = np.stack([tokens[s : s + context] for s in starts])
    y = np.stack([tokens[s + 1 : s + context + 1] for s in starts])
    return x.astype(np.int32), y.astype(np.int32)


def load_text(context: int, stride: int, val_fraction: float = 0.1):
    """The sonnets as character ids, cut into train and validation windows; also the vocab."""
    text = TEXT.read_text(encoding="utf-8")
    vocab = sorted(set(text))
    tokens = np.array([vocab.index(c) for c in text])
    cut = int(len(tokens) * (1 - val_fraction))
    data = {
        "train": windows(tokens[:cut], context, stride),
        "val": windows(tokens[cut:], context, stride=context // 2),
    }
    return data, vocab


class Block(nnx.Module):
    """Pre-norm transformer block: causal self-attention, then a GELU MLP, both residual.

    Dropout on the attention weights and on both residual branches: active in ``train()``
    mode (the sweep draws a new mask at every step), off in ``eval()`` mode (validation).
    """

    def __init__(self, width: int, heads: int, dropout: float, *, rngs: nnx.Rngs):
        self.attention_norm = nnx.LayerNorm(width, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(
            num_heads=heads, in_features=width, dropout_rate=dropout, decode=False, rngs=rngs
        )
        self.mlp_norm = nnx.LayerNorm(width, rngs=rngs)
        self.up = nnx.Linear(width, 4 * width, rngs=rngs)
        self.down = nnx.Linear(4 * width, width, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x, mask):
        x = x + self.dropout(self.attention(self.attention_norm(x), mask=mask))
        return x + self.dropout(self.down(nnx.gelu(self.up(self.mlp_norm(x)))))


class CharTransformer(nnx.Module):
    """Character embedding plus learned positions, ``layers`` blocks, then next-char logits."""

    def __init__(
        self,
        vocab: int,
        context: int,
        *,
        width: int = 64,
        heads: int = 4,
        layers: int = 2,
        dropout: float = 0.1,
        rngs: nnx.Rngs,
    ):
        self.embed = nnx.Embed(vocab, width, rngs=rngs)
        self.position = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (context, width)))
        self.blocks = nnx.List([Block(width, heads, dropout, rngs=rngs) for _ in range(layers)])
        self.final_norm = nnx.LayerNorm(width, rngs=rngs)
        self.head = nnx.Linear(width, vocab, rngs=rngs)

    def __call__(self, tokens):  # tokens: (batch, context) integer ids
        x = self.embed(tokens) + self.position[: tokens.shape[1]]
        mask = nnx.make_causal_mask(tokens)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.final_norm(x))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Sweep the AdamW rate of a char transformer.")
    parser.add_argument("--quick", action="store_true", help="tiny configuration (smoke test)")
    args = parser.parse_args(argv)

    if args.quick:
        context, width, layers = 16, 16, 1
        settings = dict(stages=2, points_per_stage=3, epochs=1, batch_size=32)
    else:
        context, width, layers = 32, 64, 2
        settings = dict(stages=5, points_per_stage=5, epochs=3, batch_size=64)
    data, vocab = load_text(context, stride=4 if args.quick else 2)
    print(f"{TEXT.name}: {len(vocab)} distinct characters, {len(data['train'][0])} windows")

    result = jaxsweep.run(
        lambda rngs: CharTransformer(len(vocab), context, width=width, layers=layers, rngs=rngs),
        data,
        optimizer=functools.partial(optax.adamw, weight_decay=0.01),
        lr_range=(1e-4, 3e-2),
        min_improvement=0.0,
        progress=not args.quick,
        **settings,
    )

    nats = result.best_score  # mean cross-entropy per character, in nats
    print(f"validation loss at the best rate: {nats:.4f} nats/char")
    print(f"  {nats / math.log(2):.3f} bits/char, perplexity {math.exp(nats):.2f}")
    print(f"  a uniform guess would score {math.log(len(vocab)):.4f} nats/char")
    print(f"  state carried per lane: {', '.join(result.config['model_state'])}")
    print(f"best learning rate: {result.best_lr:.6g}")


if __name__ == "__main__":
    main()
