"""Stochastic methods keep their randomness where it belongs: a GDAS search killed with SIGKILL at two points
and resumed ends bit-identical to an uninterrupted one (the rng round-trips through the checkpoints), and the
vmapped multi-seed step equals separate runs of each seed on every state leaf, rng included."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import bilevel
from darts_jax import steps
from darts_jax import methods as M
from darts_jax import search
from darts_jax import workdir as wd
from darts_jax.search_space import DARTS_SPACE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments", "configs"))
import fashion_search  # pylint: disable=g-import-not-at-top,wrong-import-position

FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


# --------------------------------------------------------------------------------------------------------
# The multi-seed step on a toy network (tests/test_methods.py's stand-in for the supernet).


from test_methods import _batch, _toy_apply, _toy_init  # pylint: disable=g-import-not-at-top,wrong-import-position


def _separate_state(method, hp, seed):
  """The state `search.search` starts a run with seed `seed` from: PRNGKey(seed) split in four, weights from
  the first key, α from the second, the step's rng the third (the fourth derives the architecture)."""
  k_w, k_a, k_state, _ = jax.random.split(jax.random.PRNGKey(seed), 4)
  return bilevel.init_state(_toy_init(k_w), method.init_alphas(k_a, DARTS_SPACE), hp, k_state)


@pytest.mark.parametrize("name", ["gdas", "drnas"])
def test_multi_seed_step_equals_separate_runs_on_every_leaf(name):
  """Two seeds (3 and 11) of a stochastic method, three steps across an epoch boundary (GDAS' τ changes), each
  seed its own batches: the vmapped step's states equal each seed's separate run on every leaf of the state
  (weights, α, both optimizer states, step, rng). The rng and the integer counters must match exactly. Floats
  may differ in rounding (XLA orders a vmapped reduction's sums otherwise), and Adam divides every α-gradient
  entry by its own running RMS, so an entry whose gradient is near 0 moves by a share of the step on rounding
  alone: the tolerance is 2e-3 of how far the leaf moved in the three steps (plus 1e-6 of its size). Measured:
  3.4e-4 of the move on GDAS' α, at most 2e-5 elsewhere; a seed's samples drawn from the other seed's rng, or
  its α stepped with the other seed's gradient, is off by the whole move. `bilevel.init_seeds` stacks exactly
  the separate initial states."""
  m = M.get_method(name)
  hp = m.search_hparams(epochs=2, steps_per_epoch=2)
  problem = m.problem(_toy_apply, DARTS_SPACE, hp)
  seeds = (3, 11)
  separate = [_separate_state(m, hp, s) for s in seeds]
  initial = [jax.device_get(st) for st in separate]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *separate)
  helper = bilevel.init_seeds(_toy_init, lambda k: m.init_alphas(k, DARTS_SPACE), hp, seeds)
  for path, a, b in zip(jax.tree_util.tree_flatten_with_path(stacked)[0], jax.tree.leaves(stacked),
                        jax.tree.leaves(helper)):
    np.testing.assert_array_equal(a, b, err_msg=f"init_seeds {jax.tree_util.keystr(path[0])}")

  batches = [[(_batch(jax.random.PRNGKey(100 * s + 2 * t)), _batch(jax.random.PRNGKey(100 * s + 2 * t + 1)))
              for t in range(3)] for s in seeds]
  stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
  multi = steps.make_multi_seed_step(problem, hp, donate=False)
  single = steps.make_search_step(problem, hp, donate=False)
  multi_metrics, single_metrics = [], [[] for _ in seeds]
  for t in range(3):
    stacked, mm = multi(stacked, stack([b[t][0] for b in batches]), stack([b[t][1] for b in batches]))
    multi_metrics.append(mm)
    for j in range(len(seeds)):
      separate[j], sm = single(separate[j], *batches[j][t])
      single_metrics[j].append(sm)

  leaves = jax.tree_util.tree_flatten_with_path(stacked)[0]
  for j, seed in enumerate(seeds):
    mine, start = jax.tree.leaves(separate[j]), jax.tree.leaves(initial[j])
    assert len(mine) == len(leaves) == len(start)
    for (path, together), alone, before in zip(leaves, mine, start):
      together, alone, before = np.asarray(together)[j], np.asarray(alone), np.asarray(before)
      where = f"{name} seed {seed} {jax.tree_util.keystr(path)}"
      assert together.shape == alone.shape and together.dtype == alone.dtype, where
      if not np.issubdtype(alone.dtype, np.floating):
        np.testing.assert_array_equal(together, alone, err_msg=where)
      else:
        moved = float(np.max(np.abs(alone - before)))
        assert moved > 0, where   # every float leaf changes in three steps
        np.testing.assert_allclose(together, alone, rtol=0,
                                   atol=2e-3 * moved + 1e-6 * float(np.max(np.abs(alone))), err_msg=where)
    for t in range(3):
      for k, v in single_metrics[j][t].items():
        np.testing.assert_allclose(np.asarray(multi_metrics[t][k])[j], v, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{name} seed {seed} step {t} {k}")
  assert int(stacked.step[0]) == 3
  # The leaves checked include every part of the state, and the seeds did search apart.
  assert set(bilevel.SearchState._fields) == {"params", "alphas", "w_opt", "a_opt", "step", "rng"}
  assert not np.allclose(stacked.alphas["normal"][0], stacked.alphas["normal"][1])
  assert not np.array_equal(stacked.rng[0], stacked.rng[1])


# --------------------------------------------------------------------------------------------------------
# SIGKILL at two points of a GDAS search.


def _smoke(**overrides):
  c = fashion_search.get_config("smoke")
  c.progress = False
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def _script(workdir, *extra):
  """experiments/search.py in a subprocess, with the environment tests/test_search_e2e.py's SIGKILL test uses
  (the pytest process's XLA flags are inherited, so its programs compile as the in-process run's do)."""
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.environ.get(
      "DARTS_JAX_TEST_CACHE", os.path.join("/tmp", "darts_jax_jit")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="2")
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "search.py"),
         f"--config={os.path.join(ROOT, 'experiments', 'configs', 'fashion_search.py')}:smoke",
         f"--workdir={workdir}", "--config.progress=False", "--config.method=gdas",
         "--config.checkpoint_every=1", *extra]
  return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _checkpoint_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def _kill_after_checkpoint(proc, workdir, step, timeout=900):
  """SIGKILLs `proc` as soon as the checkpoint of `step` is in `workdir`; returns the finished checkpoints
  then. Fails if the run ended first."""
  deadline = time.time() + timeout
  while step not in _checkpoint_steps(workdir) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  alive = proc.poll() is None
  if alive:
    proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert alive, f"the run ended before the checkpoint of step {step}: " + proc.stderr.read()[-1000:]
  saved = _checkpoint_steps(workdir)
  assert step in saved, (step, saved)
  assert not os.path.exists(os.path.join(workdir, "genotype.txt")), "killed after the run finished"
  return saved


def _tag_logged_records(workdir):
  """Marks every record the killed run logged. The resumed run keeps the records up to the step it resumes
  from and logs the others anew, so the tags left at the end tell which step it resumed from."""
  path = os.path.join(workdir, "metrics.jsonl")
  records = wd.read_metrics(path)
  wd.atomic_write(path, "".join(json.dumps({**r, "killed_run": True}) + "\n" for r in records))
  return max((r["step"] for r in records), default=0)


def _resumed_from(workdir):
  return max((r["step"] for r in wd.read_metrics(os.path.join(workdir, "metrics.jsonl")) if r.get("killed_run")),
             default=0)


@pytest.mark.slow   # 157 s on a busy 2-core CPU (an in-process run and three subprocesses)
@pytest.mark.skipif(not os.path.exists(FASHION), reason="Debian package dataset-fashion-mnist not installed")
def test_gdas_search_resumes_bit_identical_after_sigkill_at_two_points(tmp_path):
  """GDAS draws a Gumbel sample per edge and step from the state's rng, so a resumed run matches the
  uninterrupted one only if the rng (with weights, α, both optimizer states and the step) comes back from the
  checkpoint. A smoke search (6 steps, a checkpoint after every step) is SIGKILLed once its checkpoint of step
  1 exists, resumed, SIGKILLed again once a checkpoint two steps past the first kill's newest exists, and
  resumed to the end: its α and genotype equal the uninterrupted run's bit for bit, and each resumed run went
  on from the newest checkpoint there was."""
  straight = str(tmp_path / "straight")
  summary = search.search(_smoke(method="gdas", checkpoint_every=1, tensorboard=False), straight)
  assert summary["steps"] == 6 and summary["method"] == "gdas"

  killed = str(tmp_path / "killed")
  saved_1 = _kill_after_checkpoint(_script(killed, "--config.tensorboard=False"), killed, 1)
  newest_1 = saved_1[-1]
  assert newest_1 <= 3, f"the first kill came too late to leave room for a second one: {saved_1}"
  _tag_logged_records(killed)
  second = newest_1 + 2        # a step the first run never checkpointed
  saved_2 = _kill_after_checkpoint(_script(killed, "--config.tensorboard=False"), killed, second)
  assert _resumed_from(killed) == newest_1, (_resumed_from(killed), saved_1)
  newest_2 = saved_2[-1]
  assert newest_1 < newest_2 < 6, (saved_1, saved_2)
  _tag_logged_records(killed)
  last = _script(killed, "--config.tensorboard=False")
  _, err = last.communicate(timeout=900)
  assert last.returncode == 0, err[-2000:]
  assert _resumed_from(killed) == newest_2, (_resumed_from(killed), saved_2)

  steps = [r["step"] for r in wd.read_metrics(os.path.join(killed, "metrics.jsonl")) if r["phase"] == "search"]
  assert steps == list(range(1, 7)), steps
  read = lambda d, f: open(os.path.join(d, f), "rb").read()
  assert read(killed, "genotype.txt") == read(straight, "genotype.txt")
  assert read(killed, "alphas.json") == read(straight, "alphas.json")
  a, b = json.loads(read(killed, "alphas.json")), json.loads(read(straight, "alphas.json"))
  for k in b:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
  assert json.load(open(os.path.join(killed, "summary.json")))["genotype"] == summary["genotype"]
