"""The host CPU under XLA:CPU: an allocator setting that lets it reuse its per-step buffers instead
of page-faulting them, and whether the CPU has bf16 dot instructions (`cpu_info`).

XLA:CPU allocates each executable's temp buffer (hundreds of MiB for a train step) with
`posix_memalign` from a pool thread. glibc serves that thread from a non-main arena, whose heaps
hold at most 64 MiB, so every step gets a fresh `mmap` that is freed with `munmap` at the end: on
the benchmark shape ~73,000 page faults and ~150 ms of kernel time per step (notes/PERFORMANCE.md,
entry 17). One arena that never maps or trims large blocks keeps the pages, as tcmalloc would.

The setting must be made before jax's CPU threads first allocate, i.e. before the first
computation; made later it changes nothing (measured). It costs peak RSS that is not handed back
to the OS (every freed block of every compile and eval stays in the heap: a whole lm_tiny run
peaked at 10.0 GB with it, 2.7 GB without), so only `scaling-jax bench` applies it by default, for
its steady-state step; training applies it when `SCALING_JAX_KEEP_HOST_BUFFERS=1`.

`release_free_memory` is the other direction: glibc's `malloc_trim`, called by the trainer between
phases (after the first step's compile, after each eval and save, at each log step), hands back the
freed pages the heaps still hold, so the next phase's peak does not sit on top of the last one's
garbage (notes/PERFORMANCE.md, entry 30).
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import logging
import os
import platform
import sys

log = logging.getLogger(__name__)

# glibc <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def _jax_runs_on_cpu() -> bool:
    """True when JAX_PLATFORMS asks for the CPU first, or no accelerator plugin is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    if importlib.util.find_spec("libtpu") is not None:
        return False
    if any(True for _ in importlib.metadata.entry_points(group="jax_plugins")):
        return False
    return importlib.util.find_spec("jax_plugins") is None


def keep_host_buffers(default: bool = True) -> bool:
    """Make glibc malloc keep large freed blocks (one arena, no mmap, no trim below 2 GiB).

    Call before jax runs anything; calling again is harmless. `SCALING_JAX_KEEP_HOST_BUFFERS`
    (`1` or `0`) overrides `default`. Returns whether the setting was applied: not when it is off,
    not on non-glibc systems, not when jax will use an accelerator (set JAX_PLATFORMS=cpu to run on
    the CPU of a machine that has one).
    """
    wanted = os.environ.get("SCALING_JAX_KEEP_HOST_BUFFERS", "1" if default else "0") != "0"
    if not wanted or not sys.platform.startswith("linux"):
        return False
    if not _jax_runs_on_cpu():
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    ok = (mallopt(_M_ARENA_MAX, 1) == 1 and mallopt(_M_MMAP_MAX, 0) == 1
          and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1)
    _state["kept"] = _state["kept"] or ok
    log.debug("keep_host_buffers: mallopt %s", "applied" if ok else "refused")
    return ok


def release_free_memory() -> bool:
    """Hand the pages of freed heap blocks back to the OS (glibc `malloc_trim(0)`); a no-op where
    there is no glibc or `keep_host_buffers` is in force (its point is to keep them). Returns
    whether anything was released."""
    if _state["kept"] or not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    return bool(trim(0))


_state = {"kept": False}  # whether keep_host_buffers applied its setting in this process


# CPU flags that mean bf16 dot products run in hardware: x86 (Cooper Lake+, Zen 4+; Sapphire Rapids'
# AMX), and the Arm BF16 extension (/proc/cpuinfo "Features": bf16).
BF16_DOT_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_info(cpuinfo: str | None = None) -> dict[str, str]:
    """The host CPU's model and whether it has bf16 dot instructions, from /proc/cpuinfo text.

    `bf16_dots` is "native", "emulated" (XLA widens bf16 to f32 for the dot: bf16 compute is then
    slower than float32, measured 97 vs 115 GFLOP/s on an AMD EPYC without them) or "unknown"
    (no flags line, e.g. not Linux).
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    flags = fields.get("flags", fields.get("features"))
    bf16 = "unknown" if flags is None else "native" if BF16_DOT_FLAGS & set(flags.split()) else "emulated"
    return {"cpu": fields.get("model name") or platform.processor() or platform.machine() or "unknown",
            "bf16_dots": bf16}
