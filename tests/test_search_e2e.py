"""End-to-end search runs through the library function the script calls: real Fashion-MNIST, TFDS mock data,
resume after SIGKILL, clear errors."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from darts_jax import genotypes
from darts_jax import search
from darts_jax import workdir as wd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments", "configs"))
import fashion_search  # pylint: disable=g-import-not-at-top,wrong-import-position

FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


def _smoke(**overrides):
  c = fashion_search.get_config("smoke")
  c.progress = False
  c.tensorboard = True
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def test_hessian_eigenvalue_every_epoch_in_the_metrics(tmp_path):
  """``hessian_every=1``: each epoch record carries the α Hessian's largest eigenvalue, a finite number."""
  workdir = str(tmp_path / "h")
  search.search(_smoke(hessian_every=1, hessian_iters=5), workdir)
  epochs = [r for r in wd.read_metrics(os.path.join(workdir, "metrics.jsonl")) if r["phase"] == "epoch"]
  assert len(epochs) == 2
  for r in epochs:
    assert isinstance(r["hessian_eigenvalue"], float) and r["hessian_eigenvalue"] == r["hessian_eigenvalue"]
    assert 1 <= r["hessian_iterations"] <= 10


def _check_artifacts(workdir, epochs):
  for name in ("config.json", "metrics.jsonl", "genotype.json", "genotype.txt", "alphas.json", "summary.json",
               "cells_normal.png", "cells_normal.svg", "cells_reduce.png", "cells_reduce.svg", "alphas.png",
               "alphas.svg"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  g = genotypes.from_json(open(os.path.join(workdir, "genotype.json")).read())
  assert genotypes.parse(open(os.path.join(workdir, "genotype.txt")).read()) == g
  genotypes.validate(g)
  records = wd.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  per_epoch = [r for r in records if r["phase"] == "epoch"]
  assert [r["epoch"] for r in per_epoch] == list(range(epochs))
  for r in per_epoch:
    assert 0.0 <= r["val_acc"] <= 1.0 and r["alpha_entropy"] > 0 and r["seconds_per_step"] > 0
    genotypes.parse(r["genotype"])
  assert all(np.isfinite(r["train_loss"]) and "lr" in r for r in records if r["phase"] == "search")
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert os.listdir(os.path.join(workdir, "checkpoints"))
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["search_seconds"] > 0 and summary["versions"]["jax"]
  return g, summary


@pytest.mark.skipif(not os.path.exists(FASHION), reason="Debian package dataset-fashion-mnist not installed")
def test_workdir_with_a_different_config_is_refused(tmp_path):
  wd.prepare(str(tmp_path), {"a": 1})
  with pytest.raises(wd.WorkdirError, match="different config"):
    wd.prepare(str(tmp_path), {"a": 2})
  assert json.load(open(tmp_path / "config.json")) == {"a": 1}


@pytest.mark.slow
def test_tfds_mock_cifar10_search_fused_step(tmp_path):
  """CIFAR-10 through TFDS' mock data, with the fused step (one program, the default off CPU) end to end."""
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=64):
    summary = search.search(_smoke(dataset="cifar10", subset=0, step_backend="fused"), str(tmp_path / "run"))
  g, _ = _check_artifacts(str(tmp_path / "run"), epochs=2)
  assert genotypes.to_text(g) == summary["genotype"]
  assert summary["step_program"] == "fused"


def _script(workdir, *extra):
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.environ.get(
      "DARTS_JAX_TEST_CACHE", os.path.join("/tmp", "darts_jax_jit")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="2")
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "search.py"),
         f"--config={os.path.join(ROOT, 'experiments', 'configs', 'fashion_search.py')}:smoke",
         f"--workdir={workdir}", "--config.progress=False", *extra]
  return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.skipif(not os.path.exists(FASHION), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_search_artifacts_resume_sigkill_and_sigterm(tmp_path):
  """A real Fashion-MNIST search writes every artifact; re-running a finished run trains nothing; a run killed
  with SIGKILL mid-way (a real subprocess) resumes and ends with the uninterrupted run's genotype and α; a run
  sent SIGTERM mid-epoch saves a checkpoint of its current step, says how to resume and exits 143, and the
  resumed run ends bit-identical to the uninterrupted one."""
  straight = str(tmp_path / "straight")
  summary = search.search(_smoke(), straight)
  g, saved = _check_artifacts(straight, epochs=2)
  assert genotypes.to_text(g) == summary["genotype"] == saved["genotype"]
  assert summary["step_program"] == "edgewise"   # the default on a CPU
  n_records = len(wd.read_metrics(os.path.join(straight, "metrics.jsonl")))
  again = search.search(_smoke(), straight)  # finished run: resumes at the end, trains nothing
  assert again["genotype"] == summary["genotype"] and again["steps"] == summary["steps"]
  assert len(wd.read_metrics(os.path.join(straight, "metrics.jsonl"))) == n_records

  killed = str(tmp_path / "killed")
  proc = _script(killed)
  first = os.path.join(killed, "checkpoints", "3")  # the end of epoch 1 of 2
  deadline = time.time() + 900
  while not os.path.isdir(first) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.1)
  assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()[-500:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(killed, "genotype.txt"))
  resumed = _script(killed)
  out, err = resumed.communicate(timeout=900)
  assert resumed.returncode == 0, err[-2000:]
  summary_killed = json.load(open(os.path.join(killed, "summary.json")))
  assert f"final α entropy: {summary_killed['alpha_entropy']:.5f} (uniform: {np.log(8):.5f})" in out, out
  steps = [r["step"] for r in wd.read_metrics(os.path.join(killed, "metrics.jsonl")) if r["phase"] == "search"]
  assert steps == sorted(set(steps)), "resumed log repeats or skips steps"
  read = lambda d, f: open(os.path.join(d, f)).read()
  assert read(killed, "genotype.txt") == read(straight, "genotype.txt")
  a, b = json.loads(read(killed, "alphas.json")), json.loads(read(straight, "alphas.json"))
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))

  termed = str(tmp_path / "termed")
  proc = _script(termed, "--config.checkpoint_every=2")
  log = os.path.join(termed, "metrics.jsonl")
  deadline = time.time() + 900

  def logged_steps():
    return [r["step"] for r in wd.read_metrics(log) if r["phase"] == "search"] if os.path.exists(log) else []
  while 4 not in logged_steps() and proc.poll() is None and time.time() < deadline:   # step 4: mid epoch 1
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before SIGTERM: " + proc.stderr.read()[-500:]
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 143, err[-2000:]
  line = [l for l in err.splitlines() if "SIGTERM" in l]
  assert len(line) == 1 and "re-run the same command" in line[0] and "Traceback" not in err, err[-2000:]
  saved = sorted(int(d) for d in os.listdir(os.path.join(termed, "checkpoints")) if d.isdigit())
  stopped = int(line[0].split(" at step ")[1].split()[0])
  assert stopped % 3 and stopped == saved[-1] and stopped < 6, (stopped, saved)   # mid-epoch, that step saved
  assert len(saved) == 2   # the newest two of steps 2 (checkpoint_every), 3 (epoch end), 4 and the stop
  resumed = _script(termed, "--config.checkpoint_every=2")
  _, err = resumed.communicate(timeout=900)
  assert resumed.returncode == 0, err[-2000:]
  assert read(termed, "genotype.txt") == read(straight, "genotype.txt")
  a = json.loads(read(termed, "alphas.json"))
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


def test_script_errors_are_one_line(tmp_path):
  proc = _script(str(tmp_path / "w"), "--config.dataset=no_such_dataset")
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 1
  last = [l for l in err.strip().splitlines() if l.startswith("error:")]
  assert len(last) == 1 and "no_such_dataset" in last[0], err[-1000:]
  assert "Traceback" not in err


@pytest.mark.skipif(not os.path.exists(FASHION), reason="Debian package dataset-fashion-mnist not installed")
def test_nb201_search_end_to_end_keeps_alpha_frozen_in_warmup(tmp_path):
  """An NB201 DrNAS search through `search.search`: its released NB201 settings reach the loop (recorded in the
  summary), α does not move in the warm-up epoch and does afterwards, and the cell picture is written."""
  import jax  # pylint: disable=g-import-not-at-top
  from darts_jax import methods, nb201, search_space  # pylint: disable=g-import-not-at-top
  c = _smoke(space="nb201", method="drnas", epochs=2, steps_per_epoch=3, warmup_epochs=1, tensorboard=False)
  c.model.C, c.model.N = 4, 1
  workdir = str(tmp_path / "nb201")
  summary = search.search(c, workdir)
  assert summary["space"] == "nb201" and summary["alpha_frozen_epochs"] == [0]
  assert summary["hparams"]["w_lr"] == 0.025 and summary["hparams"]["a_lr"] == 3e-4
  assert summary["alpha_entropy"] < summary["alpha_entropy_uniform"]
  for name in ("cell.png", "cell.svg", "alphas.png", "genotype.txt"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert nb201.parse_arch(open(os.path.join(workdir, "genotype.txt")).read().strip())
  assert json.load(open(os.path.join(workdir, "genotype.json")))["nb201"] == summary["genotype"]
  init = methods.get_method("drnas").init_alphas(jax.random.split(jax.random.PRNGKey(c.seed), 4)[1],
                                                 search_space.NB201_SPACE)
  first = np.asarray(methods.dirichlet_mean(init)["normal"])
  epochs = [r for r in wd.read_metrics(os.path.join(workdir, "metrics.jsonl")) if r["phase"] == "epoch"]
  np.testing.assert_allclose(epochs[0]["op_weights"]["normal"], first, rtol=0, atol=1e-7)   # frozen
  assert np.abs(np.asarray(epochs[1]["op_weights"]["normal"]) - first).max() > 1e-6        # moved


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(FASHION), reason="Debian package dataset-fashion-mnist not installed")
def test_fairdarts_threshold_search_and_retrain_from_the_command_line(tmp_path):
  """FairDARTS with its released threshold parse, options given as ``--config.method_kwargs.*``: the search
  exports a triple-form genotype (picture included) and the retraining script builds and trains it."""
  search_dir, retrain_dir = tmp_path / "search", tmp_path / "retrain"
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.environ.get("JAX_COMPILATION_CACHE_DIR", "/tmp/darts_jax_jit"))
  run = lambda *args: subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                                     timeout=1200, check=False)
  proc = run("experiments/search.py", "--config=experiments/configs/fashion_search.py:smoke",
             f"--workdir={search_dir}", "--config.method=fairdarts", "--config.progress=false",
             "--config.method_kwargs.parse=threshold_sparse", "--config.method_kwargs.op_threshold=0.5")
  assert proc.returncode == 0, proc.stderr[-3000:]
  g = genotypes.from_json(open(search_dir / "genotype.json").read())
  summary = json.load(open(search_dir / "summary.json"))
  assert genotypes.is_sparse(g) and genotypes.parse(summary["genotype"]) == g
  assert json.load(open(search_dir / "config.json"))["method_kwargs"] == {"parse": "threshold_sparse",
                                                                         "op_threshold": 0.5}
  assert os.path.getsize(search_dir / "cells_normal.png") > 0
  # σ(α) starts at 0.5 and moves by ~1e-2 in this short run: the strongest op of most edges passes 0.5.
  assert genotypes.cell_edges(g, "normal") and genotypes.cell_edges(g, "reduce"), g
  proc = run("experiments/retrain.py", "--config=experiments/configs/fashion_retrain.py:smoke",
             f"--workdir={retrain_dir}", f"--config.genotype={search_dir / 'genotype.json'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 0.0 <= json.load(open(retrain_dir / "summary.json"))["test_acc"] <= 1.0


def test_step_backend_choice():
  """``config.step_backend``: auto is the edge chain on a CPU where it can run (DARTS space, no perturbed weight
  pass, one device), fused otherwise; an explicit backend that cannot run the search is one ValueError."""
  import types  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from darts_jax import methods  # pylint: disable=g-import-not-at-top

  def choose(backend, method="darts", space="darts", devices=1):
    c = _smoke(step_backend=backend, method=method, space=space)
    m = methods.get_method(method).for_space(space)
    model = search.build_model(c, m, 10, (28, 28, 1))
    hp = m.search_hparams(epochs=1, steps_per_epoch=1)
    return search.step_backend(c, model, m.problem(model.apply, model.space, hp), hp,
                               types.SimpleNamespace(num_devices=devices))

  assert jax.default_backend() == "cpu"
  assert choose("auto") == "edgewise" and choose("fused") == "fused" and choose("per_pass") == "per_pass"
  assert choose("auto", method="sdarts_rs") == "fused"
  assert choose("auto", space="nb201") == "fused" and choose("per_pass", space="nb201") == "per_pass"
  assert choose("auto", devices=8) == "fused"
  # The chosen backend runs its own gradients: per_pass the jitted whole-network ones, edgewise the edge chain.
  c = _smoke()
  m = methods.get_method("darts").for_space("darts")
  model = search.build_model(c, m, 10, (28, 28, 1))
  hp = m.search_hparams(epochs=1, steps_per_epoch=1)
  problem = m.problem(model.apply, model.space, hp)
  edge = search.make_step("edgewise", model, problem, hp).net
  assert edge is search.make_step("edgewise", model, problem, hp, update_alphas=False).net  # shared programs
  per_pass = search.make_step("per_pass", model, problem, hp).net
  assert per_pass is not edge and per_pass.grads is not edge.grads
  for kw, words in [(dict(backend="edgewise", space="nb201"), "edge programs"),
                    (dict(backend="per_pass", method="sdarts_adv"), "perturbs"),
                    (dict(backend="edgewise", devices=8), "one device")]:
    with pytest.raises(ValueError, match=words):
      choose(**kw)
