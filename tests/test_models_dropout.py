"""Dropout masks: our unrolled threefry is jax's threefry bit for bit, and the masks have the
Bernoulli statistics they claim (rate, independence of the draws that share a word, key use)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32

from scaling_jax.models.attention import dropout_mask, threefry2x32


def test_threefry2x32_is_jax_threefry_bit_for_bit():
    key = jax.random.key_data(jax.random.PRNGKey(12345))
    x = jax.random.randint(jax.random.PRNGKey(1), (2, 3000), 0, 2**31 - 1).astype(jnp.uint32)
    ours = jax.jit(threefry2x32)(key[0], key[1], x[0], x[1])
    ref = threefry_2x32(key, x.reshape(-1))  # jax hashes the two halves of a flat array as (x1, x2)
    np.testing.assert_array_equal(np.concatenate([np.asarray(o) for o in ours]), np.asarray(ref))


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.003])  # 0.003 takes the 32-bit path
def test_dropout_mask_rate_and_independence(rate):
    n = 1 << 20
    keep = np.asarray(jax.jit(lambda k: dropout_mask(k, 1.0 - rate, (256, 4096)))(jax.random.PRNGKey(7)))
    dropped = ~keep.reshape(-1)
    sigma = np.sqrt(rate * (1 - rate) / n)
    assert abs(dropped.mean() - rate) < 5 * sigma
    # Neighbours (the two 16-bit halves of one threefry word) drop together at rate^2, as independent draws do.
    both = (dropped[0::2] & dropped[1::2]).mean()
    assert abs(both - rate**2) < 5 * np.sqrt(rate**2 * (1 - rate**2) / (n // 2))
    # So do the mask's two halves, drawn from one threefry call's two output words.
    both = (dropped[: n // 2] & dropped[n // 2:]).mean()
    assert abs(both - rate**2) < 5 * np.sqrt(rate**2 * (1 - rate**2) / (n // 2))


def test_dropout_mask_follows_the_key():
    draw = jax.jit(lambda k: dropout_mask(k, 0.9, (3, 5, 7)))
    a, b = draw(jax.random.PRNGKey(0)), draw(jax.random.PRNGKey(1))
    assert a.shape == (3, 5, 7) and a.dtype == jnp.bool_
    np.testing.assert_array_equal(a, draw(jax.random.PRNGKey(0)))
    assert (a != b).any()
    typed = dropout_mask(jax.random.key(0), 0.9, (3, 5, 7))  # new-style key, same threefry words
    np.testing.assert_array_equal(typed, a)
    rbg = dropout_mask(jax.random.key(0, impl="rbg"), 0.5, (4000,))  # other PRNGs: jax.random.bernoulli
    assert 0.45 < float(rbg.mean()) < 0.55
    assert bool(dropout_mask(jax.random.PRNGKey(0), 1.0, (100,)).all())
    assert not bool(dropout_mask(jax.random.PRNGKey(0), 0.0, (100,)).any())
