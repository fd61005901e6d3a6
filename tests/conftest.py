"""Shared test fixtures: run entry points as a user would, in a subprocess."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

# Many tests compile the same small programs (the test-size GPT's steps) in separate processes;
# a persistent compilation cache shared by the pytest workers and their subprocesses compiles
# each once. It returns the very executable a fresh compile would, so results are unchanged.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / "runs" / "pytest-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# The suite compiles hundreds of small programs and runs each for a few steps: with LLVM's
# optimizations and XLA:CPU's fusion emitters off they compile 5-7x faster, to the same float32
# math up to rounding. A test whose claim is bit-exactness between two different programs
# compiles them with XLA's defaults (test_optimizer_battery's `XLA_DEFAULT_CPU`).
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
if FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):  # pytest-xdist workers inherit it
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()


def run_module(module: str, *args: str, env: dict[str, str] | None = None,
               timeout: float = 1800) -> subprocess.CompletedProcess:
  """`python -m module args...` from the repo root; returns the completed process.

  `timeout` only guards against a hang: a test that needs seconds idle may need many minutes
  on a loaded machine, so no test should set a smaller one.
  """
  env = dict(env or {})
  if "XLA_FLAGS" in env:  # added to the suite's flags, not in place of them
    env["XLA_FLAGS"] = f"{os.environ['XLA_FLAGS']} {env['XLA_FLAGS']}"
  full_env = {**os.environ, "JAX_PLATFORMS": "cpu", **env}
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=full_env,
                        capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(name="run_module")
def run_module_fixture():
  return run_module


@pytest.fixture(name="tiny_config")
def tiny_config_fixture():
  """The test-size GPT config (1 layer, d=32, 30 steps); each test gets its own copy."""
  from experiments import lm
  return lm.get_config("size=test")
