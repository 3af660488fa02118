"""GPT-2 size families: exact parameter counts, FLOPs per token, members by width at a fixed aspect ratio."""
from __future__ import annotations

import numbers

from scaling_jax.flops import train_flops_per_token

GPT2_VOCAB = 50257
GPT2_POSITIONS = 1024


def _check_positive_ints(**values) -> None:
    for name, value in values.items():
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def gpt2_params(vocab_size: int, n_positions: int, d_model: int, n_layer: int,
                d_ff: int | None = None, *, embeddings: bool = True) -> int:
    """Exact parameter count of GPT-2 (transformers' GPT2LMHeadModel, LM head tied to wte).

    Per layer: ln_1 (2d), attention q/k/v and output projections with biases (4d^2 + 4d), ln_2 (2d),
    MLP c_fc and c_proj with biases (2 d d_ff + d_ff + d); then ln_f (2d), wte (V d), wpe (P d).
    embeddings=False leaves out wte and wpe (Kaplan et al.'s non-embedding N).
    """
    d_ff = 4 * d_model if d_ff is None else d_ff
    _check_positive_ints(vocab_size=vocab_size, n_positions=n_positions, d_model=d_model,
                         n_layer=n_layer, d_ff=d_ff)
    d, d_ff, vocab_size, n_positions = int(d_model), int(d_ff), int(vocab_size), int(n_positions)
    per_layer = 2 * d + (4 * d * d + 4 * d) + 2 * d + (2 * d * d_ff + d_ff + d)
    total = int(n_layer) * per_layer + 2 * d
    if embeddings:
        total += vocab_size * d + n_positions * d
    return total


def gpt2_matmul_params(vocab_size: int, d_model: int, n_layer: int, d_ff: int | None = None) -> int:
    """The weights GPT-2 multiplies each token by: per layer q, k, v and the attention output
    (4 d^2) and the MLP (2 d d_ff), then the LM head (V d, tied to wte): the N of
    `scaling_jax.flops.train_flops_per_token`."""
    d_ff = 4 * d_model if d_ff is None else d_ff
    _check_positive_ints(vocab_size=vocab_size, d_model=d_model, n_layer=n_layer, d_ff=d_ff)
    return int(n_layer) * (4 * d_model * d_model + 2 * d_model * d_ff) + vocab_size * d_model


def gpt2_flops_per_token(vocab_size: int, d_model: int, n_layer: int, seq_len: int, d_ff: int | None = None) -> int:
    """Training FLOPs per token of a GPT-2 causal LM: the project's one count,
    `train_flops_per_token(gpt2_matmul_params(...), n_layer, seq_len, d_model)`."""
    return train_flops_per_token(gpt2_matmul_params(vocab_size, d_model, n_layer, d_ff), int(n_layer),
                                 int(seq_len), int(d_model))


def gpt2_member(d_model: int, n_layer: int, *, head_dim: int = 64, vocab_size: int = GPT2_VOCAB,
                n_positions: int = GPT2_POSITIONS, seq_len: int | None = None,
                d_ff: int | None = None) -> dict:
    """One family member: {name, d_model, n_layer, n_head, d_ff, params, params_non_embedding,
    flops_per_token} (training FLOPs per token at seq_len, default n_positions: `gpt2_flops_per_token`)."""
    _check_positive_ints(d_model=d_model, n_layer=n_layer, head_dim=head_dim)
    if d_model % head_dim:
        raise ValueError(f"d_model={d_model} is not a multiple of head_dim={head_dim}")
    d_model, n_layer = int(d_model), int(n_layer)
    d_ff = 4 * d_model if d_ff is None else int(d_ff)
    seq_len = n_positions if seq_len is None else seq_len
    _check_positive_ints(seq_len=seq_len)
    seq_len = int(seq_len)
    non_embedding = gpt2_params(vocab_size, n_positions, d_model, n_layer, d_ff, embeddings=False)
    return {
        "name": f"gpt2-d{d_model}-l{n_layer}",
        "d_model": d_model,
        "n_layer": n_layer,
        "n_head": d_model // head_dim,
        "d_ff": d_ff,
        "params": gpt2_params(vocab_size, n_positions, d_model, n_layer, d_ff),
        "params_non_embedding": non_embedding,
        "flops_per_token": gpt2_flops_per_token(vocab_size, d_model, n_layer, seq_len, d_ff),
    }


def gpt2_family(widths, *, aspect_ratio: float = 64.0, head_dim: int = 64,
                vocab_size: int = GPT2_VOCAB, n_positions: int = GPT2_POSITIONS,
                seq_len: int | None = None) -> list[dict]:
    """Members for each d_model in `widths`, with n_layer = round(d_model / aspect_ratio) (at
    least 1), n_head = d_model / head_dim and d_ff = 4 d_model; sorted by parameters.

    Kaplan et al. (2020, fig. 5) find loss nearly flat in d_model / n_layer over 20..200; GPT-2
    small (768 / 12) has 64.
    """
    if not aspect_ratio > 0:
        raise ValueError(f"aspect_ratio must be positive, got {aspect_ratio!r}")
    widths = list(widths)
    if not widths:
        raise ValueError("widths is empty: give at least one d_model")
    members = [gpt2_member(w, _layers_for(w, aspect_ratio), head_dim=head_dim,
                           vocab_size=vocab_size, n_positions=n_positions, seq_len=seq_len)
               for w in widths]
    return sorted(members, key=lambda m: m["params"])


def _layers_for(d_model, aspect_ratio: float) -> int:
    _check_positive_ints(d_model=d_model)
    return max(1, round(int(d_model) / aspect_ratio))


def width_for_params(target_params: float, *, aspect_ratio: float = 64.0, head_dim: int = 64,
                     vocab_size: int = GPT2_VOCAB, n_positions: int = GPT2_POSITIONS,
                     embeddings: bool = False) -> int:
    """The d_model (a multiple of head_dim) whose member at this aspect ratio has the parameter
    count closest to target_params (non-embedding by default, as Kaplan counts size)."""
    if not target_params > 0:
        raise ValueError(f"target_params must be positive, got {target_params!r}")

    def count(width: int) -> int:
        return gpt2_params(vocab_size, n_positions, width, _layers_for(width, aspect_ratio),
                           embeddings=embeddings)

    width = head_dim
    while count(width + head_dim) <= target_params:
        width += head_dim
    return min((width, width + head_dim), key=lambda w: abs(count(w) - target_params))
