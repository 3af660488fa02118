"""keep_host_buffers: XLA:CPU's temp buffer is reused across calls instead of page-faulted each time."""
import json
import os
import subprocess
import sys

import pytest

# A 100 MB temp (the [5000, 5000] product cannot fuse into the next dot), run 11 times; prints the
# median minor page faults per call and whether the setting was applied. XLA frees an execution's
# temp on its own thread a moment after the result is ready, so a call made at once can find the
# last temp not yet freed and map a second one (seen as 1-5 faulting calls in 40 back to back, more
# on a loaded machine; with the pause, none after the second call). The pause before each call
# tests the allocator alone.
SCRIPT = r"""
import json, resource, statistics, time
from scaling_jax.hostmem import keep_host_buffers
applied = keep_host_buffers()
import jax, jax.numpy as jnp
f = jax.jit(lambda x, w, v: (x @ w) @ v)
x, w, v = jnp.ones((5000, 8)), jnp.ones((8, 5000)), jnp.ones((5000,))
faults = []
for _ in range(12):
    time.sleep(0.05)
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x, w, v).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
print(json.dumps({"applied": applied, "faults_per_call": statistics.median(faults[1:])}))
"""
PAGES = 5000 * 5000 * 4 // 4096  # pages of the temp buffer


def _python(script: str, **env_vars: str | None) -> dict:
    """Runs `script` in a fresh interpreter (the allocator is set once per process) with these
    environment variables set (None: unset); returns its last line as JSON."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    for k, v in env_vars.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run(env_value: str) -> dict:
    return _python(SCRIPT, SCALING_JAX_KEEP_HOST_BUFFERS=env_value)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_keep_host_buffers_stops_per_call_page_faults():
    off, on = _run("0"), _run("1")
    assert not off["applied"] and on["applied"]
    # Without the setting every call maps the temp afresh and faults in each page; with it, the
    # pages stay mapped.
    assert off["faults_per_call"] > 0.5 * PAGES, off
    assert on["faults_per_call"] < 0.05 * PAGES, on


# 3,000 blocks of 100 kB (below glibc's mmap threshold: they live in the heap), every tenth kept, so
# the freed 90% are holes that glibc's own trimming (of the heap's top only) never hands back.
TRIM_SCRIPT = r"""
import json, os
from scaling_jax.hostmem import keep_host_buffers, release_free_memory
def rss():
    return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) * 1024
applied = keep_host_buffers(default=os.environ.get("DEFAULT") == "1")
blocks = [bytearray(b"x" * 100_000) for _ in range(3000)]
kept = blocks[::10]
del blocks
before = rss()
released = release_free_memory()
print(json.dumps({"applied": applied, "released": released, "freed_mb": (before - rss()) / 1e6}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim is Linux-only")
@pytest.mark.parametrize("default,env_value", [("0", None), ("1", "0"), ("1", None)])
def test_release_free_memory_hands_back_holes_unless_buffers_are_kept(default, env_value):
    got = _python(TRIM_SCRIPT, DEFAULT=default, SCALING_JAX_KEEP_HOST_BUFFERS=env_value)
    kept = default == "1" and env_value is None  # the default applies only where the env says nothing
    assert got["applied"] == kept, got
    if kept:  # the point of keeping buffers: nothing is handed back
        assert not got["released"] and got["freed_mb"] < 30, got
    else:  # ~270 MB of holes: most of it back to the OS
        assert got["released"] and got["freed_mb"] > 150, got
