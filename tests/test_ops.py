"""The kernel boundary: each backend's kernels against the plain path and outside references.

`xla_cpu`'s tricks (threefry dropout bits, bf16 GEMMs with hand-written backwards) run against
`jax.extend.random.threefry_2x32`, Bernoulli statistics and float32 autodiff; `xla` is checked for
what accelerators rely on (bf16 backward GEMMs stay bf16; cuDNN chosen only where it qualifies,
XLA otherwise); activations are differentiable in forward mode.
"""
import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32

from scaling_jax import ops
from scaling_jax.config import KERNELS, REMAT_POLICIES
from scaling_jax.models.layers import REMAT_POLICIES as LAYER_REMAT_POLICIES, attend
from scaling_jax.ops import masks, xla, xla_cpu
from scaling_jax.ops.xla_cpu import batched_matmul, dropout_mask, materialized_transpose, matmul_acc32, threefry2x32


def _normal(key, shape):
    """jax.random.normal drawn flat: XLA:CPU takes 7-11 s to compile a 4-D draw, 0.3 s a flat one."""
    return jax.random.normal(key, (int(np.prod(shape)),)).reshape(shape)


def test_backend_names_agree_with_the_config_schema_and_auto_is_xla_cpu_on_cpu():
    assert KERNELS == ops.CHOICES and REMAT_POLICIES == LAYER_REMAT_POLICIES
    assert ops.resolve("auto") == ("xla_cpu" if jax.default_backend() == "cpu" else "xla")
    assert ops.get_kernels("xla").name == "xla" and ops.get_kernels(ops.BACKENDS["xla_cpu"]).name == "xla_cpu"
    with pytest.raises(ValueError, match="model.kernels: 'triton' is not one of auto, xla, xla_cpu"):
        ops.resolve("triton")


# ---------------------------------------------------------------- activations

@pytest.mark.parametrize("name", sorted(ops.ACTIVATIONS))
def test_every_activation_has_a_forward_mode_derivative_equal_to_finite_differences(name):
    x = jnp.linspace(-6.0, 6.0, 241, dtype=jnp.float32) + 0.013  # off the kink of relu
    f = ops.activation(name)
    _, tangent = jax.jvp(f, (x,), (jnp.ones_like(x),))
    h = 1e-3
    central = (f(x + h) - f(x - h)) / (2 * h)
    np.testing.assert_allclose(tangent, central, atol=2e-3)
    # reverse mode agrees with forward mode
    np.testing.assert_allclose(jax.grad(lambda t: f(t).sum())(x), tangent, rtol=1e-6, atol=1e-6)  # f32 roundoff


# ---------------------------------------------------------------- dropout bits (xla_cpu)

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


@pytest.mark.parametrize("fn", [xla_cpu.dropout_mask, xla.dropout_mask])
def test_dropout_mask_follows_the_key(fn):
    draw = jax.jit(lambda k: fn(k, 0.9, (3, 5, 7)))
    a, b = draw(jax.random.PRNGKey(0)), draw(jax.random.PRNGKey(1))
    assert a.shape == (3, 5, 7) and a.dtype == jnp.bool_
    np.testing.assert_array_equal(a, draw(jax.random.PRNGKey(0)))
    assert (a != b).any()
    typed = fn(jax.random.key(0), 0.9, (3, 5, 7))  # new-style key, same threefry words
    np.testing.assert_array_equal(typed, a)
    rbg = fn(jax.random.key(0, impl="rbg"), 0.5, (4000,))  # other PRNGs: jax.random.bernoulli
    assert 0.45 < float(rbg.mean()) < 0.55
    assert bool(fn(jax.random.PRNGKey(0), 1.0, (100,)).all())
    assert not bool(fn(jax.random.PRNGKey(0), 0.0, (100,)).any())


def test_xla_dropout_mask_is_jax_random_bernoulli():
    key = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(xla.dropout_mask(key, 0.8, (6, 7)),
                                  jax.random.bernoulli(key, 0.8, (42,)).reshape(6, 7))


# ---------------------------------------------------------------- bf16 GEMMs (xla_cpu)

def test_matmul_acc32_forward_and_grads_match_float32_reference():
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (64, 48)).astype(jnp.bfloat16)
    w = jax.random.normal(kw, (48, 40)).astype(jnp.bfloat16)
    g = jax.random.normal(kg, (64, 40))
    y, vjp = jax.vjp(matmul_acc32, x, w)
    assert y.dtype == jnp.float32
    ref_y, ref_vjp = jax.vjp(lambda a, b: a @ b, x.astype(jnp.float32), w.astype(jnp.float32))
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-4)  # exact products, f32 sums
    dx, dw = jax.jit(vjp)(g)
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
    # against the float32 reference fed the bf16-rounded cotangent, only the final bf16 rounding is left
    sdx, sdw = ref_vjp(g.astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(dx, np.float32), sdx, rtol=2**-8, atol=1e-6)
    np.testing.assert_allclose(np.asarray(dw, np.float32), sdw, rtol=2**-8, atol=1e-6)
    # a NaN in the cotangent's probe element takes the conditional's other branch: it must poison dw
    _, dw_nan = jax.jit(vjp)(g.at[0, 0].set(jnp.nan))
    assert np.isnan(np.asarray(dw_nan, np.float32)).all()


def test_materialized_transpose_is_the_transpose_and_propagates_nan():
    t = jax.jit(materialized_transpose, static_argnums=1)
    y = _normal(jax.random.PRNGKey(1), (2, 5, 3, 4))
    np.testing.assert_array_equal(t(y, (0, 2, 1, 3), y[0, 0, 0, 0]), jnp.transpose(y, (0, 2, 1, 3)))
    assert np.isnan(np.asarray(t(y, (0, 2, 1, 3), jnp.float32(jnp.nan)))).all()


def batched_matmul_nt(a, b):
    return batched_matmul(a, b, True)


@pytest.mark.parametrize("fn,spec", [(batched_matmul_nt, "nhij,nhkj->nhik"), (batched_matmul, "nhij,nhjk->nhik")])
def test_batched_matmuls_match_float32_autodiff(fn, spec):
    ka, kb, kg = jax.random.split(jax.random.PRNGKey(2), 3)
    a = _normal(ka, (2, 3, 16, 8)).astype(jnp.bfloat16)
    b_shape = (2, 3, 12, 8) if fn is batched_matmul_nt else (2, 3, 8, 12)
    b = _normal(kb, b_shape).astype(jnp.bfloat16)
    g = _normal(kg, (2, 3, 16, 12)).astype(jnp.bfloat16).astype(jnp.float32)  # exact in bf16
    y, vjp = jax.vjp(jax.jit(fn), a, b)
    ref_y, ref_vjp = jax.vjp(lambda x, z: jnp.einsum(spec, x, z), a.astype(jnp.float32), b.astype(jnp.float32))
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)
    for got, want in zip(vjp(g), ref_vjp(g)):  # bf16 products summed in f32, then one bf16 rounding
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=2**-8, atol=1e-6)


@pytest.mark.parametrize("fn,shapes,spec", [(matmul_acc32, ((512, 256), (256, 256)), "ij,jk->ik"),
                                            (batched_matmul_nt, ((4, 128, 64), (4, 128, 64)), "nij,nkj->nik"),
                                            (batched_matmul, ((4, 128, 128), (4, 128, 64)), "nij,njk->nik")])
def test_bf16_matmuls_compile_with_constant_cotangents(fn, shapes, spec):
    """A constant cotangent lets XLA fold the materialising conditional's predicate; a bf16 dot
    that the fold leaves transposed must not reach XLA:CPU's f32-only dot thunk (measured: without
    the barrier on the probe, "Unsupported element type for DotThunk::Execute: BF16 x BF16 = F32")."""
    a, b = (jax.random.normal(jax.random.PRNGKey(i), s).astype(jnp.bfloat16) for i, s in enumerate(shapes))
    c = jax.random.normal(jax.random.PRNGKey(9), jnp.einsum(spec, a, b).shape)
    ref = jax.grad(lambda x, z: jnp.sum(jnp.einsum(spec, x, z) * c), argnums=(0, 1))(a.astype(jnp.float32),
                                                                                      b.astype(jnp.float32))
    loss = lambda x, z: jnp.sum(fn(x, z).astype(jnp.bfloat16).astype(jnp.float32) * c)
    got = jax.jit(jax.grad(loss, argnums=(0, 1)))(a, b)
    for g, r in zip(got, ref):  # bf16-rounded cotangents: a loose match, the crash is the point
        np.testing.assert_allclose(np.asarray(g, np.float32), r, rtol=5e-2, atol=5e-1)


def _bmm_attention(q, k, v, mask, *, scale, dropout_rate=0.0, dropout_rng=None):
    """xla_cpu's bf16 heads-first attention, forced on (by default only where bf16 dots are native)."""
    if q.dtype == jnp.bfloat16 and dropout_rng is not None:
        return xla_cpu.attention_bmm(q, k, v, mask, scale=scale, dropout_rate=dropout_rate, dropout_rng=dropout_rng)
    return xla_cpu.attention(q, k, v, mask, scale=scale, dropout_rate=dropout_rate, dropout_rng=dropout_rng)


@pytest.mark.parametrize("kernels", ["xla", "xla_cpu", "xla_cpu+bmm"])
def test_bf16_attention_with_dropout_tracks_float32(kernels):
    """Each backend's bf16 dropout path against its float32 path on the same bf16-exact inputs and
    the same dropout bits (xla_cpu+bmm: heads-first with hand-written backward)."""
    if kernels == "xla_cpu+bmm":
        kernels = dataclasses.replace(ops.BACKENDS["xla_cpu"], attention=_bmm_attention)
    kq, kk, kv, kg = jax.random.split(jax.random.PRNGKey(4), 4)
    q, k, v = (jax.random.normal(kx, (2, 16, 32)).astype(jnp.bfloat16) for kx in (kq, kk, kv))
    g = jax.random.normal(kg, (2, 16, 32))
    mask = jnp.ones((2, 1, 1, 16), bool).at[1, :, :, 11:].set(False)

    def run(dtype):
        def f(q, k, v):
            out = attend(q, k, v, mask, num_heads=4, scale=0.35, dropout_rate=0.25, dropout_rng=jax.random.PRNGKey(7),
                         kernels=kernels)
            return jnp.sum(out.astype(jnp.float32) * g)
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(*(t.astype(dtype) for t in (q, k, v)))

    (l32, g32), (l16, g16) = run(jnp.float32), run(jnp.bfloat16)
    assert abs(float(l16) - float(l32)) < 1e-2 * abs(float(l32))
    for a, b in zip(g16, g32):
        np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=2e-2, atol=3e-2)  # measured ~1e-2 of 2


# ---------------------------------------------------------------- the backends side by side

def _dots(jaxpr) -> list[tuple]:
    """(lhs dtype, rhs dtype) of every dot_general in a jaxpr, sub-jaxprs (pjit, custom rules) included."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            out.append(tuple(str(v.aval.dtype) for v in eqn.invars))
        for p in eqn.params.values():
            inner = getattr(p, "jaxpr", p)
            if hasattr(inner, "eqns"):
                out += _dots(inner)
    return out


def test_xla_cpu_uses_its_bf16_gemms_only_where_bf16_dots_are_native(monkeypatch):
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 8)).astype(jnp.bfloat16)
    w = jax.random.normal(jax.random.PRNGKey(1), (8, 12))
    jaxpr = lambda: str(jax.make_jaxpr(lambda x, w: xla_cpu.linear(x, w, None, dtype=jnp.bfloat16))(x, w))
    for native, custom in ((False, False), (True, True)):
        monkeypatch.setattr(xla_cpu, "native_bf16_dots", lambda native=native: native)
        assert ("custom_vjp" in jaxpr()) is custom
    ref = xla.linear(x, w, None, act="gelu", dtype=jnp.bfloat16)
    got = xla_cpu.linear_acc32(x, w, None, act="gelu", dtype=jnp.bfloat16)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref, np.float32), atol=2**-6, rtol=2**-6)


def test_xla_bf16_linear_runs_every_gemm_forward_and_backward_in_bf16():
    """On accelerators the kernel-gradient GEMM must run at the bf16 rate: no dot may see float32."""
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 32)).astype(jnp.bfloat16)
    w, b = jax.random.normal(jax.random.PRNGKey(1), (32, 48)), jnp.zeros((48,))
    loss = lambda x, w, b: jnp.sum(xla.linear(x, w, b, act="gelu", dtype=jnp.bfloat16).astype(jnp.float32) ** 2)
    dots = _dots(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(x, w, b).jaxpr)
    assert len(dots) == 3 and all(d == ("bfloat16", "bfloat16") for d in dots), dots


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-6), (jnp.bfloat16, 2**-6)])  # bf16: an ulp or two
def test_xla_and_xla_cpu_compute_the_same_linear_and_attention(dtype, tol):
    kx, kw, kq = jax.random.split(jax.random.PRNGKey(5), 3)
    x = jax.random.normal(kx, (32, 16)).astype(dtype)
    w, b = jax.random.normal(kw, (16, 24)) * 0.3, jnp.linspace(-1, 1, 24)
    outs = [k.linear(x, w, b, act="gelu", dtype=dtype) for k in ops.BACKENDS.values()]
    np.testing.assert_allclose(np.asarray(outs[0], np.float32), np.asarray(outs[1], np.float32), atol=tol, rtol=tol)
    q = _normal(kq, (2, 8, 4, 8)).astype(dtype)
    mask = masks.combine(masks.causal_mask(8), masks.padding_mask(jnp.ones((2, 8)).at[1, 6:].set(0)))
    atts = [k.attention(q, q[:, :, :2], q[:, :, 2:], mask, scale=0.3) for k in ops.BACKENDS.values()]  # GQA 4/2
    np.testing.assert_allclose(np.asarray(atts[0], np.float32), np.asarray(atts[1], np.float32), atol=tol, rtol=tol)


def test_grouped_query_attention_equals_repeated_key_value_heads():
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(6), 3)
    q, k, v = _normal(kq, (2, 5, 6, 4)), _normal(kk, (2, 7, 2, 4)), _normal(kv, (2, 7, 2, 4))
    mask = masks.padding_mask(jnp.ones((2, 7)).at[0, 5:].set(0))
    rep = lambda t: jnp.repeat(t, 3, axis=2)  # query head n reads key/value head n // 3
    for kern in ops.BACKENDS.values():
        got = kern.attention(q, k, v, mask, scale=0.5)
        np.testing.assert_allclose(got, xla.attention(q, rep(k), rep(v), mask, scale=0.5), atol=1e-6)
        dropped = kern.attention(q, k, v, mask, scale=0.5, dropout_rate=0.3, dropout_rng=jax.random.PRNGKey(0))
        ref = xla.attention_with_dropout(q, rep(k), rep(v), mask, scale=0.5, rate=0.3, rng=jax.random.PRNGKey(0),
                                         mask_fn=kern.dropout_mask)
        np.testing.assert_allclose(dropped, ref, atol=1e-6)


def test_cached_attention_over_a_heads_first_cache_is_jax_dot_product_attention():
    """Grouped heads, several query positions, a per-query mask (causal + padding): the heads-first
    layout gives what jax.nn.dot_product_attention gives on the B x S x K x H one."""
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(7), 3)
    q, k, v = _normal(kq, (2, 3, 6, 4)), _normal(kk, (2, 7, 2, 4)), _normal(kv, (2, 7, 2, 4))
    mask = masks.decoder_mask(jnp.array([[3, 4, 5], [4, 5, 6]]), jnp.broadcast_to(jnp.arange(7), (2, 7)),
                              jnp.ones((2, 7), bool).at[0, :2].set(False))
    want = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=0.5)
    heads_first = lambda t: t.transpose(0, 2, 1, 3)
    for kern in ops.BACKENDS.values():
        got = kern.cached_attention(q, heads_first(k), heads_first(v), mask, scale=0.5)
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_cudnn_is_asked_for_only_where_it_qualifies_and_a_refusal_falls_back_to_xla(monkeypatch):
    q_bf16 = jnp.ones((1, 4, 2, 64), jnp.bfloat16)
    on_cpu = jax.default_backend() == "cpu"
    assert xla.cudnn_qualifies(q_bf16) is not on_cpu  # the CPU never; an NVIDIA GPU (device_check.sh) does
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "devices", lambda *a: [types.SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3")])
    assert xla.cudnn_qualifies(q_bf16)
    assert not xla.cudnn_qualifies(q_bf16.astype(jnp.float32))  # cuDNN's fused attention: fp16/bf16 only
    assert not xla.cudnn_qualifies(jnp.ones((1, 4, 2, 160), jnp.bfloat16))  # head size over 128
    assert not xla.cudnn_qualifies(jnp.ones((1, 4, 2, 60), jnp.bfloat16))  # not a multiple of 8
    monkeypatch.setattr(jax, "devices", lambda *a: [types.SimpleNamespace(device_kind="AMD Instinct MI300X")])
    assert not xla.cudnn_qualifies(q_bf16)
    monkeypatch.undo()
    # Asked for cuDNN where there is none ("cuDNN is not detected"): the XLA implementation answers.
    # (On a GPU cuDNN answers: the same numbers within bf16 rounding.)
    q = _normal(jax.random.PRNGKey(0), (1, 4, 2, 8)).astype(jnp.bfloat16)
    with monkeypatch.context() as m:
        m.setattr(xla, "cudnn_qualifies", lambda q: True)
        got = xla.attention(q, q, q, None, scale=0.3)
    want = jax.nn.dot_product_attention(q, q, q, scale=0.3)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=0 if on_cpu else 2e-2)


def test_masks_from_segments_and_windows():
    seg = jnp.array([[1, 1, 2, 2, 2, 0]])
    m = np.asarray(masks.segment_mask(seg))[0, 0]
    assert m[0, 1] and not m[1, 2] and m[3, 4] and not m[2, 5] and not m[5, 5]
    pos = jnp.arange(6)[None]
    w = np.asarray(masks.window_mask(pos, pos, 3))[0, 0]
    assert [int(w[5, j]) for j in range(6)] == [0, 0, 0, 1, 1, 1]
    assert masks.combine(None, None) is None
