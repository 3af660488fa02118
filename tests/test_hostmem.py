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


def _run(env_value: str) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "SCALING_JAX_KEEP_HOST_BUFFERS": env_value}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_keep_host_buffers_stops_per_call_page_faults():
    off, on = _run("0"), _run("1")
    assert not off["applied"] and on["applied"]
    # Without the setting every call maps the temp afresh and faults in each page; with it, the
    # pages stay mapped.
    assert off["faults_per_call"] > 0.5 * PAGES, off
    assert on["faults_per_call"] < 0.05 * PAGES, on
