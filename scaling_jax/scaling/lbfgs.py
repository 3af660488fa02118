"""Multi-start L-BFGS in JAX: one jitted, vmapped iteration loop that runs many starting points at once."""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

MEMORY = 10  # (s, y) pairs kept, as scipy's L-BFGS-B default
# Line search: every candidate step is evaluated at once (a fixed cost that vmaps well, unlike a
# data-dependent while loop), and the lowest objective among those meeting Armijo's condition wins.
STEP_LADDER = (4.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.03, 1e-2, 1e-3, 1e-4, 1e-6, 1e-9)
ARMIJO_C1 = 1e-4


class _State(NamedTuple):
    x: jax.Array  # P
    f: jax.Array  # scalar objective
    g: jax.Array  # P gradient
    s_MxP: jax.Array  # past steps, a ring buffer
    y_MxP: jax.Array  # past gradient changes
    rho_M: jax.Array  # 1 / (s . y)
    k: jax.Array  # pairs stored so far (ring position = k % MEMORY)
    n_iter: jax.Array
    done: jax.Array
    converged: jax.Array  # stopped by a tolerance (not by a failed line search or max_iter)


class MinimizeResult(NamedTuple):
    x_SxP: np.ndarray
    value_S: np.ndarray
    n_iter_S: np.ndarray
    converged_S: np.ndarray


def _init_one(objective, x, shared, own):
    f, g = jax.value_and_grad(objective)(x, *shared, *own)
    p = x.shape[0]
    zeros_MxP = jnp.zeros((MEMORY, p), x.dtype)
    return _State(x, f, g, zeros_MxP, zeros_MxP, jnp.zeros(MEMORY, x.dtype), jnp.int32(0),
                  jnp.int32(0), ~jnp.all(jnp.isfinite(g)) | ~jnp.isfinite(f), jnp.bool_(False))


def _direction(st: _State) -> jax.Array:
    """Two-loop recursion (Nocedal & Wright, Algorithm 7.4) over the ring buffer."""
    m = jnp.minimum(st.k, MEMORY)

    def newest_first(i, carry):
        q, alpha_M = carry
        j = (st.k - 1 - i) % MEMORY
        a = jnp.where(i < m, st.rho_M[j] * (st.s_MxP[j] @ q), 0.0)
        return q - a * st.y_MxP[j], alpha_M.at[j].set(a)

    q, alpha_M = jax.lax.fori_loop(0, MEMORY, newest_first, (st.g, jnp.zeros_like(st.rho_M)))
    last = (st.k - 1) % MEMORY
    sy, yy = st.s_MxP[last] @ st.y_MxP[last], st.y_MxP[last] @ st.y_MxP[last]
    # H0 = (s.y / y.y) I; before any pair, a unit-length steepest-descent step.
    gamma = jnp.where(st.k > 0, sy / yy, 1.0 / jnp.maximum(jnp.linalg.norm(st.g), 1e-300))
    r = gamma * q

    def oldest_first(i, r):
        j = (st.k - m + i) % MEMORY
        b = st.rho_M[j] * (st.y_MxP[j] @ r)
        return jnp.where(i < m, r + st.s_MxP[j] * (alpha_M[j] - b), r)

    return -jax.lax.fori_loop(0, MEMORY, oldest_first, r)


def _step_one(objective, st: _State, shared, own, ftol, gtol) -> _State:
    d = _direction(st)
    slope = st.g @ d
    ladder = jnp.asarray(STEP_LADDER, st.x.dtype)
    f_L = jax.vmap(lambda t: objective(st.x + t * d, *shared, *own))(ladder)
    ok_L = jnp.isfinite(f_L) & (f_L <= st.f + ARMIJO_C1 * ladder * slope) & (slope < 0)
    found = jnp.any(ok_L)
    t = ladder[jnp.argmin(jnp.where(ok_L, f_L, jnp.inf))]
    x_new = st.x + t * d
    f_new, g_new = jax.value_and_grad(objective)(x_new, *shared, *own)
    s, y = x_new - st.x, g_new - st.g
    sy = s @ y
    store = found & (sy > 1e-10 * jnp.linalg.norm(s) * jnp.linalg.norm(y))  # keep H positive definite
    slot = st.k % MEMORY
    moved = _State(
        x=x_new, f=f_new, g=g_new,
        s_MxP=jnp.where(store, st.s_MxP.at[slot].set(s), st.s_MxP),
        y_MxP=jnp.where(store, st.y_MxP.at[slot].set(y), st.y_MxP),
        rho_M=jnp.where(store, st.rho_M.at[slot].set(1.0 / sy), st.rho_M),
        k=st.k + store.astype(jnp.int32), n_iter=st.n_iter + 1, done=st.done, converged=st.converged)
    # A failed line search drops the curvature memory and retries along -g; failing on -g as well
    # means no representable step lowers the objective: stop there.
    reset = st._replace(k=jnp.int32(0), n_iter=st.n_iter + 1, done=st.k == 0)
    new = jax.tree.map(lambda a, b: jnp.where(found, a, b), moved, reset)
    small_change = found & (st.f - f_new <= ftol * jnp.abs(st.f))  # scipy's factr test, relative
    small_grad = jnp.max(jnp.abs(new.g)) <= gtol
    hit = small_change | small_grad
    return new._replace(done=new.done | hit, converged=new.converged | hit)


@functools.partial(jax.jit, static_argnames=("objective",))
def _init_many(objective, x_SxP, shared, own):
    return jax.vmap(_init_one, in_axes=(None, 0, None, 0))(objective, x_SxP, shared, own)


@functools.partial(jax.jit, static_argnames=("objective", "n_steps"))
def _run_many(objective, st: _State, shared, own, n_steps, max_iter, ftol, gtol) -> _State:
    def one(st1, own1):
        def body(_, s):
            nxt = _step_one(objective, s, shared, own1, ftol, gtol)
            nxt = nxt._replace(done=nxt.done | (nxt.n_iter >= max_iter))
            return jax.tree.map(lambda a, b: jnp.where(s.done, b, a), nxt, s)  # finished starts stay put
        return jax.lax.fori_loop(0, n_steps, body, st1)

    return jax.vmap(one)(st, own)


SHRINK_SIZES = (1024, 128, 16)  # fixed, so calls with different numbers of starts share compiles


def _bucket(n_active: int, n_starts: int) -> int:
    """The array size a chunk runs at: n_starts, or the smallest of SHRINK_SIZES >= n_active.

    Each size compiles once (about a second or two on CPU), so the sizes are few; running at a
    smaller size as starts finish makes the cost follow the starts still running.
    """
    fitting = [s for s in SHRINK_SIZES if n_active <= s < n_starts]
    return min(fitting) if fitting else n_starts


def minimize_many(objective: Callable, x0_SxP, shared: tuple = (), own: tuple = (), *,
                  max_iter: int = 1000, ftol: float = 1e-13, gtol: float = 1e-14,
                  chunk: int = 25, stall_tol: float = 1e-6) -> MinimizeResult:
    """Minimises objective(x_P, *shared, *own_s) from every row of x0_SxP, in float64.

    `shared` arrays are the same for every start (the data), `own` arrays have a leading axis S (one
    row per start, e.g. bootstrap weights). Every start stops on its own: relative decrease of the
    objective <= ftol (scipy's factr test), max |gradient| <= gtol, no step that lowers it,
    max_iter, or a stall: a whole chunk of `chunk` iterations lowering it by <= stall_tol
    (relative). Starts that land on a plateau where one term of a law has vanished crawl for
    thousands of iterations otherwise. The loop runs one chunk per compiled call and carries only
    unfinished starts into the next call, so the cost follows the work left, not the slowest start.
    """
    with jax.enable_x64(True):
        x0_SxP = np.asarray(x0_SxP, np.float64)
        n_starts = x0_SxP.shape[0]
        shared = tuple(jnp.asarray(a, jnp.float64) for a in shared)
        own_np = tuple(np.asarray(a, np.float64) for a in own)
        state = jax.device_get(_init_many(objective, jnp.asarray(x0_SxP), shared,
                                          tuple(jnp.asarray(a) for a in own_np)))
        state = _State(*(np.array(a) for a in state))
        active = np.flatnonzero(~state.done)
        while active.size:
            size = _bucket(active.size, n_starts)
            idx = np.concatenate([active, np.full(size - active.size, active[0])])
            sub = _State(*(jnp.asarray(a[idx]) for a in state))
            sub_own = tuple(jnp.asarray(a[idx]) for a in own_np)
            out = _run_many(objective, sub, shared, sub_own, chunk, max_iter, ftol, gtol)
            out = _State(*(np.asarray(a)[: active.size] for a in jax.device_get(out)))
            stalled = out.f >= state.f[active] - stall_tol * np.abs(state.f[active])
            for field, a in zip(state, out):
                field[active] = a
            state.done[active] |= stalled
            active = active[~state.done[active]]
    return MinimizeResult(state.x, np.where(np.isfinite(state.f), state.f, np.inf),
                          state.n_iter, state.converged)
