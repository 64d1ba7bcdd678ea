"""Batch orders of large datasets, computed batch by batch: memory follows the batch, not the data.

An epoch's order up to :data:`PERMUTATION_MAX` examples is ``jax.random.permutation`` of the
whole epoch (the recipe the README gives for retraining a lane by hand). Beyond it, drawing
that permutation costs memory in proportion to the dataset, per seed and per epoch (a source
of 10 million examples: about 1 GB of temporaries for a sweep that reads a few thousand), so
the order is a keyed bijection of ``[0, n)`` evaluated only at the positions a call trains,
the approach of grain's index shuffle: a balanced Feistel network on the smallest even number
of bits that holds ``n``, its round function a 32-bit integer mix of the half-word and a round
key drawn from ``fold_in(data_key, epoch)``, and cycle walking (apply it again while the image
is ``>= n``) to stay inside ``[0, n)``. Every position maps to one example, every example is
reached once per epoch, and the same (key, epoch, position) gives the same example on every
device, in every process and after every resume.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PERMUTATION_MAX = 2**20  # up to this many training examples an epoch is one permutation
ROUNDS = 6  # Feistel rounds (4 make a pseudo-random permutation; 2 more for margin)


def uses_permutation(n: int) -> bool:
    """Whether an epoch of ``n`` examples is ordered by one ``jax.random.permutation``."""
    return n <= PERMUTATION_MAX


def _half_bits(n: int) -> int:
    return max(1, ((n - 1).bit_length() + 1) // 2)  # 2 * half >= bits of n - 1


def _mix(x: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: every input bit reaches every output bit."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _encrypt(x: jax.Array, round_keys: jax.Array, half: int) -> jax.Array:
    mask = jnp.uint32((1 << half) - 1)
    left, right = x >> half, x & mask
    for r in range(ROUNDS):
        left, right = right, left ^ (_mix(right ^ round_keys[r]) & mask)
    return (left << half) | right


def shuffled(order_key: jax.Array, n: int, positions: jax.Array) -> jax.Array:
    """The examples at ``positions`` of the keyed order of ``[0, n)`` (int32, like positions).

    >>> import numpy as np
    >>> key = jax.random.key(0)
    >>> out = np.asarray(shuffled(key, 10, jnp.arange(10)))
    >>> sorted(out.tolist()) == list(range(10))
    True
    """
    if not 1 <= n < 2**31:
        raise ValueError(f"n: expected 1 to 2**31 - 1 examples, got {n}")
    half = _half_bits(n)
    round_keys = jax.random.bits(order_key, (ROUNDS,), jnp.uint32)
    start = _encrypt(jnp.asarray(positions, jnp.uint32), round_keys, half)

    def outside(y):
        return jnp.any(y >= n)

    def walk(y):  # at most 4x the domain of n: about 1.3 steps on average
        return jnp.where(y >= n, _encrypt(y, round_keys, half), y)

    return jax.lax.while_loop(outside, walk, start).astype(jnp.int32)


def batch_rows(data_key: jax.Array, epoch, rows: jax.Array, n: int, batch_size: int) -> jax.Array:
    """Rows ``rows`` of epoch ``epoch``'s batch matrix, ``rows.shape + (batch_size,)``:
    the examples at positions ``row * batch_size ... + batch_size - 1`` of its keyed order
    (the remainder of an epoch is dropped, as the permutation's is)."""
    positions = jnp.asarray(rows, jnp.int32)[..., None] * batch_size + jnp.arange(batch_size)
    return shuffled(jax.random.fold_in(data_key, epoch), n, positions)
