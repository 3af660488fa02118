"""Multi-start L-BFGS in JAX: one jitted, vmapped iteration loop that runs many starting points at once."""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Written out rather than vmapping optax.lbfgs: its zoom line search is a data-dependent while
# loop, which under vmap runs every start for as long as the slowest one (measured here: about
# 30x slower on the Chinchilla grid), and it has no per-start stopping or shrinking batch.
MEMORY = 10  # (s, y) pairs kept, as scipy's L-BFGS-B default
# Line search: every candidate step is evaluated at once (a fixed cost that vmaps well, unlike a
# data-dependent while loop), and the lowest objective among those meeting Armijo's condition wins.
STEP_LADDER = (4.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.03, 1e-2, 1e-3, 1e-4, 1e-6, 1e-9)
ARMIJO_C1 = 1e-4


class _State(NamedTuple):
    x: jax.Array  # P, the current point
    f: jax.Array  # objective at x (inf before the first evaluation)
    x_prev: jax.Array  # P, the point before the last step, and the gradient there:
    g_prev: jax.Array  # P   the next iteration turns them into a curvature pair
    has_prev: jax.Array
    s_MxP: jax.Array  # past steps, a ring buffer
    y_MxP: jax.Array  # past gradient changes
    rho_M: jax.Array  # 1 / (s . y)
    k: jax.Array  # pairs stored so far (ring position = k % MEMORY)
    n_iter: jax.Array  # gradient evaluations
    done: jax.Array
    converged: jax.Array  # stopped by a tolerance (not by a failed line search or max_iter)


class MinimizeResult(NamedTuple):
    x_SxP: np.ndarray
    value_S: np.ndarray
    n_iter_S: np.ndarray
    converged_S: np.ndarray


def _initial_state(x0_SxP: np.ndarray) -> _State:
    """Built on the host: each iteration starts by evaluating the gradient at x, so no separate
    (separately compiled) initialisation is needed."""
    s, p = x0_SxP.shape
    zeros_SxMxP = np.zeros((s, MEMORY, p))
    false_S = np.zeros(s, bool)
    return _State(x0_SxP.copy(), np.full(s, np.inf), x0_SxP.copy(), np.zeros((s, p)), false_S,
                  zeros_SxMxP, zeros_SxMxP.copy(), np.zeros((s, MEMORY)), np.zeros(s, np.int32),
                  np.zeros(s, np.int32), false_S.copy(), false_S.copy())


def _direction(g, s_MxP, y_MxP, rho_M, k) -> jax.Array:
    """-H g by the two-loop recursion (Nocedal & Wright, Algorithm 7.4) over the ring buffer."""
    m = jnp.minimum(k, MEMORY)

    def newest_first(i, carry):
        q, alpha_M = carry
        j = (k - 1 - i) % MEMORY
        a = jnp.where(i < m, rho_M[j] * (s_MxP[j] @ q), 0.0)
        return q - a * y_MxP[j], alpha_M.at[j].set(a)

    q, alpha_M = jax.lax.fori_loop(0, MEMORY, newest_first, (g, jnp.zeros_like(rho_M)))
    last = (k - 1) % MEMORY
    sy, yy = s_MxP[last] @ y_MxP[last], y_MxP[last] @ y_MxP[last]
    # H0 = (s.y / y.y) I; before any pair, a unit-length steepest-descent step.
    gamma = jnp.where(k > 0, sy / yy, 1.0 / jnp.maximum(jnp.linalg.norm(g), 1e-300))
    r = gamma * q

    def oldest_first(i, r):
        j = (k - m + i) % MEMORY
        b = rho_M[j] * (y_MxP[j] @ r)
        return jnp.where(i < m, r + s_MxP[j] * (alpha_M[j] - b), r)

    return -jax.lax.fori_loop(0, MEMORY, oldest_first, r)


def _step_one(objective, st: _State, shared, own, ftol, gtol) -> _State:
    f, g = jax.value_and_grad(objective)(st.x, *shared, *own)
    # The curvature pair of the previous step; kept only if s.y > 0 (H stays positive definite).
    s, y = st.x - st.x_prev, g - st.g_prev
    sy = s @ y
    store = st.has_prev & (sy > 1e-10 * jnp.linalg.norm(s) * jnp.linalg.norm(y))
    slot = st.k % MEMORY
    s_MxP = jnp.where(store, st.s_MxP.at[slot].set(s), st.s_MxP)
    y_MxP = jnp.where(store, st.y_MxP.at[slot].set(y), st.y_MxP)
    rho_M = jnp.where(store, st.rho_M.at[slot].set(1.0 / jnp.where(store, sy, 1.0)), st.rho_M)
    k = st.k + store.astype(jnp.int32)

    d = _direction(g, s_MxP, y_MxP, rho_M, k)
    slope = g @ d
    ladder = jnp.asarray(STEP_LADDER, st.x.dtype)
    f_L = jax.vmap(lambda t: objective(st.x + t * d, *shared, *own))(ladder)
    ok_L = jnp.isfinite(f_L) & (f_L <= f + ARMIJO_C1 * ladder * slope) & (slope < 0)
    found = jnp.any(ok_L)
    best = jnp.argmin(jnp.where(ok_L, f_L, jnp.inf))
    f_new = jnp.where(found, f_L[best], f)

    broken = ~jnp.isfinite(f) | ~jnp.all(jnp.isfinite(g))
    small_grad = jnp.max(jnp.abs(g)) <= gtol
    small_change = found & (f - f_new <= ftol * jnp.abs(f))  # scipy's factr test, relative
    # A failed line search drops the curvature memory and retries along -g; failing on -g as well
    # means no representable step lowers the objective: stop there.
    stuck = ~found & (k == 0)
    move = found & ~small_grad & ~broken
    return _State(
        x=jnp.where(move, st.x + ladder[best] * d, st.x),
        f=jnp.where(move, f_new, f),
        x_prev=jnp.where(move, st.x, st.x_prev), g_prev=jnp.where(move, g, st.g_prev),
        has_prev=move,
        s_MxP=s_MxP, y_MxP=y_MxP, rho_M=rho_M, k=jnp.where(found, k, 0),
        n_iter=st.n_iter + 1,
        done=st.done | broken | small_grad | small_change | stuck,
        converged=st.converged | small_grad | small_change)


@functools.partial(jax.jit, static_argnames=("objective", "n_steps"))
def _run_many(objective, st: _State, shared, own, n_steps, max_iter, ftol, gtol) -> _State:
    def one(st1, own1):
        def body(_, s):
            nxt = _step_one(objective, s, shared, own1, ftol, gtol)
            nxt = nxt._replace(done=nxt.done | (nxt.n_iter >= max_iter))
            return jax.tree.map(lambda a, b: jnp.where(s.done, b, a), nxt, s)  # finished starts stay put
        return jax.lax.fori_loop(0, n_steps, body, st1)

    return jax.vmap(one)(st, own)


SIZES = (16, 64, 256, 1024)  # rows a chunk runs at (then multiples of 1024): few programs to compile


def padded_size(n: int) -> int:
    """The smallest of SIZES, or multiple of 1024, that holds n rows. Each size compiles once per
    objective (about 2 s on CPU, far more than a chunk's work at these sizes), so calls with
    different numbers of starts (grid, polish, bootstrap) share programs."""
    fitting = [s for s in SIZES if n <= s]
    return fitting[0] if fitting else -(-n // 1024) * 1024


def _bucket(n_active: int, n_starts: int) -> int:
    """The rows the next chunk runs at: the starts still running, padded (the cost follows the
    unfinished starts), never more than the first chunk's size."""
    return min(padded_size(n_active), padded_size(n_starts))


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
    x0_SxP = np.asarray(x0_SxP, np.float64)
    if x0_SxP.ndim != 2 or x0_SxP.shape[0] == 0:
        raise ValueError(f"x0_SxP must be a non-empty 2-D array, got shape {x0_SxP.shape}")
    n_starts = x0_SxP.shape[0]
    own_np = tuple(np.asarray(a, np.float64) for a in own)
    state = _initial_state(x0_SxP)
    active = np.arange(n_starts)
    with jax.enable_x64(True):
        shared = tuple(jnp.asarray(a, jnp.float64) for a in shared)
        while active.size:
            size = _bucket(active.size, n_starts)
            idx = np.concatenate([active, np.full(size - active.size, active[0])])
            sub = _State(*(jnp.asarray(a[idx]) for a in state))
            sub_own = tuple(jnp.asarray(a[idx]) for a in own_np)
            out = _run_many(objective, sub, shared, sub_own, chunk, max_iter, ftol, gtol)
            out = _State(*(np.asarray(a)[: active.size] for a in jax.device_get(out)))
            with np.errstate(invalid="ignore"):  # inf - inf before the first evaluation
                stalled = out.f >= state.f[active] - stall_tol * np.abs(state.f[active])
            for field, a in zip(state, out):
                field[active] = a
            state.done[active] |= stalled
            active = active[~state.done[active]]
    return MinimizeResult(state.x, np.where(np.isfinite(state.f), state.f, np.inf),
                          state.n_iter, state.converged)
