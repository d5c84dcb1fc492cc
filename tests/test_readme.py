"""The README's core example runs as printed and its search commands name files that exist."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme():
  with open(os.path.join(ROOT, "README.md")) as f:
    return f.read()


def test_core_example_runs(capsys):
  block = re.search(r"## The core in 15 lines\n\n```python\n(.*?)```", _readme(), re.S).group(1)
  assert len(block.strip().splitlines()) <= 16
  exec(compile(block, "README.md", "exec"), {})  # pylint: disable=exec-used
  out = capsys.readouterr().out.splitlines()
  assert out[-1].startswith("Genotype(normal=[")
  val, train = map(float, out[-2].split())
  assert val > 0 and train > 0


def test_commands_refer_to_existing_files():
  text = _readme()
  for path in set(re.findall(r"(experiments/[\w/]+\.py|\.ci/\w+|benchmarks/\w+\.py)", text)):
    assert os.path.exists(os.path.join(ROOT, path)), path
  assert "python -m pytest -q -n 2 tests" in text
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    assert "python -m pytest -q -n 2 tests\n" in f.read()


def test_flax_example_trains():
  """The README's Flax NNX example, on a registry genotype at a small size: one step of its train_step."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  block = re.search(r"## Discovered networks in your own Flax code\n\n```python\n(.*?)```", _readme(), re.S).group(1)
  assert '"runs/s0/genotype.json", C=16, layers=8' in block
  block = block.replace('"runs/s0/genotype.json", C=16, layers=8', '"DARTS_V2", C=4, layers=3')
  scope = {}
  exec(compile(block, "README.md", "exec"), scope)  # pylint: disable=exec-used
  x, y = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 1)), jnp.arange(4) % 10
  before = jax.tree.leaves(scope["model"].trees()[0])[0].copy()
  loss = float(scope["train_step"](scope["model"], scope["optimizer"], x, y))
  assert loss > 0 and not jnp.allclose(before, jax.tree.leaves(scope["model"].trees()[0])[0])
