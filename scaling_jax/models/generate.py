"""Pure, jitted generation for the decoder families (GPT-2, Llama/Qwen2/Mistral): prefill, then one token
per step from a KV cache held as a pytree, greedy or sampled (temperature, top-k, top-p), stopping at EOS."""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scaling_jax.errors import ConfigError


def _cache_dims(config) -> tuple[int, int, int]:
    """(layers, key/value heads, head size) of a decoder config."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return config.num_hidden_layers, heads, config.head_dim


def init_cache(config, batch: int, length: int, dtype: Any = jnp.float32) -> dict:
    """An empty KV cache for `batch` rows of `length` slots: {"index": next slot (int32 scalar),
    "pos": key positions B x S, "valid": written real tokens B x S, "layers": [{"k", "v": B x K x S x H}]}
    (heads first, as HF's cache: `ops.xla.cached_attention`).
    A plain pytree: it goes through jit, while_loop and sharding like any state."""
    n, heads, head = _cache_dims(config)
    zeros = lambda: jnp.zeros((batch, heads, length, head), dtype)
    return {"index": jnp.zeros((), jnp.int32), "pos": jnp.zeros((batch, length), jnp.int32),
            "valid": jnp.zeros((batch, length), bool), "layers": [{"k": zeros(), "v": zeros()} for _ in range(n)]}


def left_pad_positions(attention_mask_BxP: jax.Array) -> jax.Array:
    """Positions of a left-padded batch: 0 at each row's first real token (HF generate's
    `cumsum(mask) - 1`); padding slots get 0 (they are masked as keys)."""
    return jnp.maximum(jnp.cumsum(attention_mask_BxP.astype(jnp.int32), axis=-1) - 1, 0)


def pick_token(logits_BxV: jax.Array, rng: jax.Array, *, sample: bool, temperature: jax.Array, top_k: jax.Array,
               top_p: jax.Array) -> jax.Array:
    """Greedy argmax, or a draw from softmax(logits / temperature) restricted to the `top_k` largest
    (0 = all) and to the smallest set whose probability reaches `top_p` (nucleus; 1 = all). The
    numbers are traced: other values reuse the compiled function."""
    if not sample:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    V = logits_BxV.shape[-1]
    logits = logits_BxV.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
    sorted_BxV = jnp.sort(logits, axis=-1)[:, ::-1]  # descending
    k = jnp.where(top_k > 0, jnp.minimum(top_k, V), V)
    kth_Bx1 = jnp.take_along_axis(sorted_BxV, jnp.broadcast_to(k - 1, (logits.shape[0], 1)), axis=-1)
    probs = jax.nn.softmax(jnp.where(sorted_BxV >= kth_Bx1, sorted_BxV, -jnp.inf), axis=-1)
    # Keep the sorted logits whose preceding mass is below top_p (the first always stays).
    keep_sorted = (jnp.cumsum(probs, axis=-1) - probs) < top_p
    cutoff_Bx1 = jnp.min(jnp.where(keep_sorted, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where((logits >= kth_Bx1) & (logits >= cutoff_Bx1), logits, -jnp.inf)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("module", "max_new_tokens", "eos", "pad", "sample", "cache_dtype"))
def _generate(params, input_ids_BxP, attention_mask_BxP, rng, temperature, top_k, top_p, *, module,
              max_new_tokens: int, eos: tuple[int, ...], pad: int, sample: bool, cache_dtype):
    B, P = input_ids_BxP.shape
    N = max_new_tokens
    cache = init_cache(module.config, B, P + N, cache_dtype)
    pos_BxP = left_pad_positions(attention_mask_BxP)
    logits_Bx1xV, cache = module.apply({"params": params}, input_ids_BxP, attention_mask_BxP, positions_BxL=pos_BxP,
                                       cache=cache, last_only=True)
    eos_arr = jnp.asarray(eos if eos else (-1,), jnp.int32)
    pick = functools.partial(pick_token, sample=sample, temperature=temperature, top_k=top_k, top_p=top_p)
    rng, key = jax.random.split(rng)
    first_B = pick(logits_Bx1xV[:, -1], key)
    tokens_BxN = jnp.full((B, N), pad, jnp.int32).at[:, 0].set(first_B)
    done_B = jnp.isin(first_B, eos_arr)
    next_pos_B = jnp.max(pos_BxP, axis=-1) + 1

    def cond(state):
        step, _, done_B, *_ = state
        return (step < N) & ~jnp.all(done_B)

    def body(state):
        step, tokens_BxN, done_B, cache, next_pos_B, rng = state
        prev_Bx1 = jax.lax.dynamic_slice_in_dim(tokens_BxN, step - 1, 1, axis=1)
        logits_Bx1xV, cache = module.apply({"params": params}, prev_Bx1, jnp.ones_like(prev_Bx1),
                                           positions_BxL=next_pos_B[:, None], cache=cache)
        rng, key = jax.random.split(rng)
        tok_B = jnp.where(done_B, pad, pick(logits_Bx1xV[:, 0], key))
        tokens_BxN = jax.lax.dynamic_update_slice_in_dim(tokens_BxN, tok_B[:, None], step, axis=1)
        done_B = done_B | jnp.isin(tok_B, eos_arr)
        return step + 1, tokens_BxN, done_B, cache, next_pos_B + 1, rng

    state = (jnp.int32(1), tokens_BxN, done_B, cache, next_pos_B, rng)
    _, tokens_BxN, _, _, _, _ = jax.lax.while_loop(cond, body, state)
    return tokens_BxN


def _is_llama(module) -> bool:
    return hasattr(module.config, "rms_norm_eps")


def generate(model, params, input_ids_BxP, attention_mask_BxP=None, *, max_new_tokens: int,
             eos_token_id: int | tuple[int, ...] | None = None, pad_token_id: int = 0, sample: bool = False,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, rng: jax.Array | None = None,
             cache_dtype: Any = jnp.float32) -> jax.Array:
    """New tokens B x max_new_tokens (int32) after each row of a LEFT-padded prompt batch.

    `model` is a causal-LM `Pretrained` (or its Flax module) of the GPT-2 or Llama family; `params`
    its params. The prompt is prefilled in one forward pass that fills a KV cache of
    P + max_new_tokens slots; then each step feeds one token and reads the cache, all inside one
    `jax.jit` (a `lax.while_loop`), so a batch shape and the static options (`max_new_tokens`, EOS,
    `sample`) compile once, never per token. A row stops after emitting an `eos_token_id` (kept in
    the output) and is filled with `pad_token_id` from then on; the loop ends when every row has
    stopped. Greedy (argmax) unless `sample`; then `temperature`, `top_k` (0 = off) and `top_p`
    (1 = off) shape the distribution and `rng` (default PRNGKey(0)) draws. Pure: same inputs, same tokens.
    """
    module = getattr(model, "module", model)
    if getattr(module, "task", "causal_lm") != "causal_lm":
        raise ConfigError(f"generate needs a causal_lm model, not task {module.task!r}")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    ids = jnp.asarray(input_ids_BxP, jnp.int32)
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ConfigError(f"input_ids must be B x P with P >= 1, got shape {ids.shape}")
    mask = jnp.ones_like(ids) if attention_mask_BxP is None else jnp.asarray(attention_mask_BxP, jnp.int32)
    if attention_mask_BxP is not None:
        m = np.asarray(attention_mask_BxP)
        if not (m[:, -1] != 0).all():
            raise ConfigError("generate takes LEFT-padded prompts: every row's last token must be real")
    if not _is_llama(module) and ids.shape[1] + max_new_tokens > module.config.n_positions:
        raise ConfigError(f"prompt {ids.shape[1]} + {max_new_tokens} new tokens exceed GPT-2's n_positions "
                          f"{module.config.n_positions}")
    eos = () if eos_token_id is None else tuple(np.atleast_1d(eos_token_id).astype(int).tolist())
    rng = jax.random.PRNGKey(0) if rng is None else rng
    return _generate(params, ids, mask, rng, jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p),
                     module=module, max_new_tokens=int(max_new_tokens), eos=eos, pad=int(pad_token_id),
                     sample=bool(sample), cache_dtype=jnp.dtype(cache_dtype))


def left_pad(rows: list[list[int]], pad_token_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> (ids B x P, mask B x P) padded on the left, as `generate` takes them."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ConfigError("every prompt needs at least one token")
    P = max(len(r) for r in rows)
    ids = np.full((len(rows), P), pad_token_id, np.int32)
    mask = np.zeros((len(rows), P), np.int32)
    for i, r in enumerate(rows):
        ids[i, P - len(r):] = r
        mask[i, P - len(r):] = 1
    return ids, mask


__all__ = ["generate", "init_cache", "left_pad", "left_pad_positions", "pick_token"]
