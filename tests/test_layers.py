"""darts_jax's modules import each other in one direction, without a cycle.

The layers, bottom to top: kernels and infrastructure (ops, data, workdir, the search state) → spaces (cell
topology, genotypes, NB201 architectures, derive, pictures) → models (supernet, final networks, NNX modules)
→ steps (the step backends, the methods) → the run loop (search, retrain, comparisons, CLI helpers). A module
may import its own layer or those below; the graph of module-level imports has no cycle; a darts_jax import
inside a function is one of at most `MAX_LAZY` and its module's docstring says why.
"""
import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "darts_jax"
MAX_LAZY = 6

LAYERS = {
    "kernels": ["darts_jax", "darts_jax.ops", "darts_jax.xla_setup", "darts_jax.parallel", "darts_jax.workdir",
                "darts_jax.bilevel", "darts_jax.data", "darts_jax.data.dataset", "darts_jax.data.pipeline",
                "darts_jax.data.sources", "darts_jax.data.synthetic", "darts_jax.data.transforms"],
    "spaces": ["darts_jax.topology", "darts_jax.genotypes", "darts_jax.nb201_arch", "darts_jax.visualize",
               "darts_jax.search_space"],
    "models": ["darts_jax.layers", "darts_jax.supernet", "darts_jax.networks", "darts_jax.nb201",
               "darts_jax.single_edge", "darts_jax.models", "darts_jax.modules"],
    "steps": ["darts_jax.hessian", "darts_jax.proxies", "darts_jax.steps", "darts_jax.steps.formula",
              "darts_jax.steps.fused", "darts_jax.steps.per_pass", "darts_jax.steps.edgewise", "darts_jax.methods"],
    "run": ["darts_jax.loop", "darts_jax.exports", "darts_jax.projection", "darts_jax.ranking", "darts_jax.zero_cost",
            "darts_jax.search", "darts_jax.retrain",
            "darts_jax.diagnostics", "darts_jax.interop", "darts_jax.compare", "darts_jax.known_answer",
            "darts_jax.retrain_compare", "darts_jax.cli"],
}
LAYER_OF = {m: i for i, (_, mods) in enumerate(LAYERS.items()) for m in mods}


def _modules():
  out = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(ROOT).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    out[name] = path
  return out


def _imports(name, path):
  """(module-level darts_jax imports, function-local ones as (line, module)) of one module."""
  tree = ast.parse(path.read_text())
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  top, local = set(), []
  modules = _modules()

  def targets(node):
    if isinstance(node, ast.Import):
      return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
      base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
    # `from darts_jax import ops` names a module; `from darts_jax.ops import Ctx` names its module.
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]

  body_ids = {id(n) for n in tree.body}
  for node in ast.walk(tree):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      found = [t for t in targets(node) if t == "darts_jax" or t.startswith("darts_jax.")]
      if not found:
        continue
      if id(node) in body_ids:
        top.update(found)
      else:
        local.extend((node.lineno, t) for t in found)
  top.discard(name)
  return top, local


def test_every_module_has_a_layer():
  assert set(_modules()) <= set(LAYER_OF), sorted(set(_modules()) - set(LAYER_OF))


def test_imports_go_down_the_layers_without_a_cycle():
  mods = _modules()
  graph = {name: _imports(name, path)[0] for name, path in mods.items()}
  upward = [(m, t) for m, ts in graph.items() for t in ts if t in LAYER_OF and LAYER_OF[t] > LAYER_OF[m]]
  assert not upward, f"imports from a lower layer to a higher one: {upward}"
  # A cycle among the module-level imports (within a layer): depth-first search for a back edge.
  state, stack = {}, []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for t in sorted(graph.get(m, ())):
      if t not in graph or t == m or (m.startswith(t + ".") and t in graph):
        continue  # a package's own __init__ re-exports are not a cycle of its submodules
      if state.get(t) == "open":
        raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(t):] + [t])}")
      if t not in state:
        visit(t)
    stack.pop()
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m)


def test_function_local_imports_are_few_and_justified():
  mods = _modules()
  lazy = {name: _imports(name, path)[1] for name, path in mods.items()}
  lazy = {k: v for k, v in lazy.items() if v}
  assert sum(len(v) for v in lazy.values()) <= MAX_LAZY, lazy
  for name, found in lazy.items():
    doc = ast.get_docstring(ast.parse(mods[name].read_text())) or ""
    for _, target in found:
      assert "lazy" in doc.lower() and target.rpartition(".")[2] in doc, (
          f"{name} imports {target} inside a function; its docstring must say why (a 'lazy' import of it)")


def test_each_module_imports_alone():
  """Each module imported first, in an interpreter where no other darts_jax module is loaded: an import
  order that only works after another module (the symptom of a hidden cycle) fails here. One subprocess
  for all modules, dropping darts_jax from `sys.modules` before each (third-party imports stay loaded)."""
  names = sorted(_modules())
  code = (
      "import importlib, sys, traceback\n"
      f"names = {names!r}\n"
      "bad = []\n"
      "for n in names:\n"
      "  for k in [k for k in sys.modules if k == 'darts_jax' or k.startswith('darts_jax.')]:\n"
      "    del sys.modules[k]\n"
      "  try:\n"
      "    importlib.import_module(n)\n"
      "  except Exception as e:\n"
      "    bad.append(f'{n}: {type(e).__name__}: {e}')\n"
      "print('\\n'.join(bad))\n"
      "sys.exit(1 if bad else 0)\n")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stdout + r.stderr[-3000:]


@pytest.mark.parametrize("name", ["darts_jax.search", "darts_jax.networks", "darts_jax.genotypes"])
def test_a_fresh_interpreter_imports_a_module_alone(name):
  """The same in a truly fresh interpreter, for a module of the run loop, of the models and of the spaces."""
  r = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
