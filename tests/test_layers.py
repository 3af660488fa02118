"""The package's shape: imports flow one way (import-linter's contracts in pyproject.toml, run here
and shown to catch a planted upward import), and the models hold no platform tricks."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"]


def _lint(root: Path, env_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(LINT, cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(env_path), "PATH": "/usr/bin:/bin"})


def test_import_contracts_hold():
    out = _lint(REPO, REPO)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert re.search(r"Contracts: 4 kept, 0 broken", out.stdout), out.stdout[-2000:]


def test_import_contracts_catch_an_upward_import_and_a_cycle(tmp_path):
    shutil.copytree(REPO / "scaling_jax", tmp_path / "scaling_jax", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    ops = tmp_path / "scaling_jax" / "ops" / "xla.py"
    ops.write_text(ops.read_text() + "\nfrom scaling_jax.train import step  # planted: ops -> train\n")
    loop = tmp_path / "scaling_jax" / "train" / "evaluate.py"
    loop.write_text(loop.read_text() + "\nfrom scaling_jax.train import loop  # planted: evaluate <-> loop\n")
    out = _lint(tmp_path, tmp_path)
    assert out.returncode != 0
    assert "scaling_jax.ops.xla -> scaling_jax.train.step" in out.stdout
    assert re.search(r"no import cycles between siblings, at any depth BROKEN", out.stdout)


def test_models_hold_no_custom_vjp_platform_branch_or_optimization_barrier():
    for path in sorted((REPO / "scaling_jax" / "models").glob("*.py")):
        text = path.read_text()
        for word in ("custom_vjp", "platform_dependent", "optimization_barrier", "default_backend"):
            assert word not in text, f"{path.name} uses {word}: kernels belong in scaling_jax/ops"
