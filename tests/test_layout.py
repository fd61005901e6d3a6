"""The layout is the architecture: one installed name, layered imports, no cycles, entry points
only in launch/, and a trainer that never asks which optimizer it runs."""

from __future__ import annotations

import ast
import pathlib
import re
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
LAYERS = ("data", "models", "algorithms", "training")  # each may import only those before it
BARE = ("data", "models", "algorithms", "training", "experiments", "launch", "reproductions",
        "benchmarks")


def _modules() -> dict[str, pathlib.Path]:
  """Library module name (`trainlab.training.loop`) -> file."""
  found = {"trainlab": REPO / "trainlab" / "__init__.py",
           "trainlab.errors": REPO / "trainlab" / "errors.py"}
  for layer in LAYERS:
    for path in sorted((REPO / layer).glob("*.py")):
      stem = "" if path.stem == "__init__" else f".{path.stem}"
      found[f"trainlab.{layer}{stem}"] = path
  return found


def _imports(path: pathlib.Path) -> list[str]:
  """Absolute module names imported by `path` at any depth (functions included)."""
  names = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
  return names


def test_library_imports_only_trainlab_names():
  for name, path in _modules().items():
    bare = [m for m in _imports(path) if m.split(".")[0] in BARE]
    assert not bare, f"{path.relative_to(REPO)} imports {bare}: use trainlab.* names"


def test_each_layer_imports_only_the_layers_before_it():
  for name, path in _modules().items():
    parts = name.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
      continue
    allowed = set(LAYERS[:LAYERS.index(parts[1]) + 1])
    for imported in _imports(path):
      pieces = imported.split(".")
      if pieces[0] == "trainlab" and len(pieces) > 1 and pieces[1] in LAYERS:
        assert pieces[1] in allowed, f"{name} imports {imported} from a later layer"


def test_algorithms_are_pure():
  for name, path in _modules().items():
    if name.startswith("trainlab.algorithms"):
      heavy = [m for m in _imports(path) if m.split(".")[0] in ("flax", "orbax", "tensorboardX")]
      assert not heavy, f"{name} imports {heavy}"


def test_no_import_cycles():
  modules = _modules()
  graph = {name: {m for m in _imports(path) if m in modules and m != name}
           for name, path in modules.items()}
  # A package __init__ importing its own submodules is not a cycle of ideas.
  state: dict[str, int] = {}

  def visit(node: str, stack: list[str]) -> None:
    state[node] = 1
    for nxt in graph[node]:
      if nxt.startswith(node + ".") or node.startswith(nxt + "."):
        continue
      if state.get(nxt) == 1:
        raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(nxt):] + [nxt])}")
      if nxt not in state:
        visit(nxt, stack + [nxt])
    state[node] = 2

  for name in graph:
    if name not in state:
      visit(name, [name])


def test_training_never_dispatches_on_an_optimizer_name():
  from trainlab.training import optimizers
  names = "|".join(re.escape(n) for n in optimizers.OPTIMIZERS)
  for path in (REPO / "training").glob("*.py"):
    if path.name == "optimizers.py":  # the registry itself names them
      continue
    text = path.read_text()
    assert not re.search(r"optimizer\.name\s*(==|!=|in\b)", text), path.name
    assert not re.search(rf"[\"'](?:{names})[\"']", text), f"{path.name} names an optimizer"


def test_launch_holds_entry_points_only():
  for path in (REPO / "launch").glob("*.py"):
    if path.name in ("__init__.py", "cli.py"):
      continue
    assert 'if __name__ == "__main__":' in path.read_text(), f"{path.name} is not an entry point"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("wheel")
  subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w",
                  str(out)], check=True, capture_output=True, timeout=900)
  return next(out.glob("trainlab-*.whl"))


def test_wheel_installs_only_trainlab(wheel):
  tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
  assert {t for t in tops if not t.endswith(".dist-info")} == {"trainlab"}


def test_wheel_works_outside_the_checkout(wheel, tmp_path):
  target = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                  str(target), str(wheel)], check=True, capture_output=True, timeout=900)
  code = ("import trainlab.algorithms.schedules as s, trainlab.training.run as r; "
          "from trainlab.algorithms.schedules import wsd_schedule; "
          "print(s.__file__); print(r.__file__); print(float(wsd_schedule(1.0, 100)(95)))")
  result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, env={"PYTHONPATH": str(target), "JAX_PLATFORMS": "cpu",
                                          "PATH": "/usr/bin:/bin"}, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.splitlines()
  assert all(line.startswith(str(target)) for line in lines[:2]), lines
  assert 0.0 < float(lines[2]) < 1.0
