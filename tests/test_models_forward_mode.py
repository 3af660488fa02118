"""Forward-mode autodiff through the models: `jax.jvp` of BERT and GPT-2 logits along a random
direction in parameter space equals a central finite difference (both kernel backends, float32).

With eps = 3e-3 the central difference's truncation error (O(eps^2)) and float32 roundoff
(O(1e-7 / eps)) are both near 5e-5 of the largest tangent (measured 3e-5 to 7e-5; at eps = 1e-2
the error is 3e-4 to 7e-4, quadratic as it should be), so 3e-4 leaves room while any wrong
derivative rule (a missing term of GELU's Phi(x) + x phi(x) is ~0.4 of it) fails.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling_jax.models import BertConfig, GPT2Config, init_model

CASES = {
    "bert": (BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=16, hidden_act="gelu"), "token_classification"),
    "gpt2": (GPT2Config(vocab_size=97, n_positions=16, n_embd=32, n_layer=2, n_head=4, activation_function="gelu"),
             "causal_lm"),
}
EPS, TOL = 3e-3, 3e-4


@pytest.mark.parametrize("kernels", ["xla_cpu", "xla"])
@pytest.mark.parametrize("family", sorted(CASES))
def test_jvp_of_logits_equals_central_finite_difference(family, kernels):
    config, task = CASES[family]
    model = init_model(config, task=task, num_labels=5 if task != "causal_lm" else None, seed=1, kernels=kernels)
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 97, (2, 12)), jnp.int32)
    mask = jnp.ones((2, 12), jnp.int32).at[1, 9:].set(0)
    leaves, treedef = jax.tree.flatten(model.params)
    keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
    direction = jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) * (jnp.std(x) + 0.02)
                                             for k, x in zip(keys, leaves)])
    logits = jax.jit(lambda p: model.apply(p, ids, mask))
    _, tangent = jax.jit(lambda p, t: jax.jvp(logits, (p,), (t,)))(model.params, direction)
    shifted = lambda s: logits(jax.tree.map(lambda p, d: p + s * d, model.params, direction))
    central = (shifted(EPS) - shifted(-EPS)) / (2 * EPS)
    scale = float(jnp.abs(tangent).max())
    assert scale > 0
    assert float(jnp.abs(central - tangent).max()) <= TOL * scale
