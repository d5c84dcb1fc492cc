"""Failure modes a user meets from the command line (issue #15): each ends in one line that says what happened
and what to do, with the exit status the README gives, and the run's checkpoints stay usable.

* a config field that does not exist, or a value of the wrong type: ``error: ...``, exit 1, nothing written;
* a damaged newest checkpoint: one ``warning:`` line, the run resumes from the previous good one (moved aside
  to ``checkpoints_damaged/``); none left: ``error: ...``, exit 1;
* an explicit ``data_dir`` without the dataset: ``error: ...`` naming the folder, no silent fall back;
* NaN/Inf in the search: exit 2 naming the step and a checkpoint that exists; re-running with lower learning
  rates resumes from it.
"""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from darts_jax import cli
from darts_jax import data
from darts_jax import search
from darts_jax import workdir as wd
from darts_jax.data import sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION = os.path.join(sources.FASHION_MNIST_DEFAULT_DIR, "train-images-idx3-ubyte.gz")
needs_fashion = pytest.mark.skipif(not os.path.exists(FASHION),
                                   reason="Debian package dataset-fashion-mnist not installed")


def _script(name, *args, timeout=300):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", name), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout, check=False)
  return proc.returncode, proc.stderr


def _one_error_line(err):
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
  return lines[0]


# Command-line flags.

_CONFIGS = {"search.py": "experiments/configs/fashion_search.py:smoke",
            "retrain.py": "experiments/configs/fashion_retrain.py:smoke",
            "compare.py": "experiments/configs/fashion_compare.py:smoke"}


@pytest.mark.parametrize("script,flag,says", [
    ("search.py", "--config.nosuchfield=3", ["--config.nosuchfield", "no field"]),
    ("search.py", "--config.model.nosuch=3", ["--config.model.nosuch", "(its fields: C, N,"]),
    ("search.py", "--config.epoch=3", ["--config.epoch", "--config.epochs"]),     # did you mean
    ("search.py", "--config.epochs=abc", ["--config.epochs=abc", "int"]),
    ("search.py", "--config.hparams.a_lr=fast", ["--config.hparams.a_lr=fast", "float"]),
    ("retrain.py", "--config.nosuchfield=3", ["--config.nosuchfield"]),
    ("retrain.py", "--config.epochs=abc", ["--config.epochs=abc"]),
    ("compare.py", "--config.nosuchfield=3", ["--config.nosuchfield"]),
    ("compare.py", "--config.search.epochs=abc", ["--config.search.epochs=abc"]),
    ("search.py", "--config.method_kwargs.nosuch=1", ["'darts' takes no option(s) nosuch"]),
    ("search.py", "--config.method_kwargs.parse", ["--config.method_kwargs.parse=VALUE"]),
    ("search.py", "--config.step_backend=magic", ["unknown step_backend 'magic'", "edgewise"]),
])
def test_bad_config_flag_is_one_line_exit_1(tmp_path, script, flag, says):
  rc, err = _script(script, f"--config={_CONFIGS[script]}", f"--workdir={tmp_path / 'w'}", flag)
  line = _one_error_line(err)
  assert rc == 1
  for s in says:
    assert s in line, line
  assert not (tmp_path / "w").exists()


def test_missing_config_file_is_one_line_exit_1(tmp_path):
  rc, err = _script("search.py", "--config=experiments/configs/no_such_config.py", f"--workdir={tmp_path}/w")
  assert rc == 1 and "no_such_config.py" in _one_error_line(err)
  rc, err = _script("search.py", "--config=experiments/configs/fashion_search.py:bad", f"--workdir={tmp_path}/w")
  assert rc == 1 and "unknown config argument 'bad'" in _one_error_line(err)


# Damaged checkpoints.


def _tree(step):
  return {"a": np.full((64,), float(step), np.float32), "b": np.arange(6, dtype=np.int32).reshape(2, 3) * step}


def _saved(workdir, steps=(3, 6)):
  ck = wd.Checkpoints(workdir)
  for s in steps:
    ck.save_with_elapsed(s, _tree(s), 10.0 * s)
  ck.close()


def _damage(step_dir, how="truncate"):
  files = [f for f in glob.glob(os.path.join(step_dir, "**"), recursive=True) if os.path.isfile(f)]
  if how == "truncate":      # a copy cut short (disk full, killed rsync)
    for f in files:
      if "/d/" in f:
        with open(f, "r+b") as fh:
          fh.truncate(os.path.getsize(f) // 2)
  elif how == "metadata":    # garbage in the tree's metadata
    with open(os.path.join(step_dir, "default", "_METADATA"), "w") as fh:
      fh.write("{not json")
  elif how == "emptied":     # every file zero bytes
    for f in files:
      open(f, "wb").close()
  else:
    raise ValueError(how)


@pytest.mark.parametrize("how", ["truncate", "metadata", "emptied"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capfd, how):
  workdir = str(tmp_path)
  _saved(workdir)
  _damage(os.path.join(workdir, "checkpoints", "6"), how)
  ck = wd.Checkpoints(workdir)
  state, step, elapsed = ck.restore_or_init(_tree(0))
  assert step == 3 and elapsed == 30.0
  np.testing.assert_array_equal(state["a"], _tree(3)["a"])
  err = capfd.readouterr().err
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("warning: "), err[-3000:]
  assert "step 6" in lines[0] and "damaged" in lines[0] and "step 3" in lines[0]
  # The damaged one is kept aside for inspection, out of orbax's way: the run can save step 6 again.
  assert os.path.isdir(os.path.join(workdir, "checkpoints_damaged", "6"))
  ck.save_with_elapsed(6, _tree(6), 60.0)
  ck.close()
  ck = wd.Checkpoints(workdir)
  assert ck.restore_or_init(_tree(0))[1] == 6
  ck.close()


def test_no_usable_checkpoint_is_a_one_line_error(tmp_path, capfd):
  workdir = str(tmp_path)
  _saved(workdir)
  for s in ("3", "6"):
    _damage(os.path.join(workdir, "checkpoints", s))
  ck = wd.Checkpoints(workdir)
  with pytest.raises(wd.WorkdirError) as e:
    ck.restore_or_init(_tree(0))
  ck.close()
  msg = str(e.value)
  assert "\n" not in msg and "6" in msg and "3" in msg and "new --workdir" in msg
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "6"))   # nothing moved when nothing is usable
  capfd.readouterr()

  def resume():
    ck2 = wd.Checkpoints(workdir)
    try:
      ck2.restore_or_init(_tree(0))
    finally:
      ck2.close()
  assert cli.run(resume) == 1
  err = capfd.readouterr().err
  assert _one_error_line(err).startswith("error: no usable checkpoint")


# An explicit data_dir.


def _write_idx(path, array, magic):
  import gzip  # pylint: disable=g-import-not-at-top
  header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def test_explicit_data_dir_without_the_files_is_an_error_not_a_fall_back(tmp_path, monkeypatch, capsys):
  system = tmp_path / "system"      # stands in for /usr/share/datasets/fashion-mnist
  system.mkdir()
  for prefix, n in (("train", 4), ("t10k", 2)):
    _write_idx(system / f"{prefix}-images-idx3-ubyte.gz", np.zeros((n, 28, 28)), 2051)
    _write_idx(system / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n), 2049)
  monkeypatch.setattr(sources, "FASHION_MNIST_DEFAULT_DIR", str(system))
  monkeypatch.delenv(sources.FASHION_MNIST_ENV, raising=False)
  assert len(data.load_dataset("fashion_mnist", "train")) == 4      # no data_dir: the system copy
  for given in (tmp_path / "empty", tmp_path / "missing"):
    if given.name == "empty":
      given.mkdir()
    with pytest.raises(data.DataError) as e:
      data.load_dataset("fashion_mnist", "train", data_dir=str(given))
    assert str(given) in str(e.value) and "\n" not in str(e.value)
  assert cli.run(lambda: data.load_dataset("fashion_mnist", "test", data_dir=str(tmp_path / "empty"))) == 1
  assert str(tmp_path / "empty") in _one_error_line(capsys.readouterr().err)


# NaN/Inf.


def test_divergence_before_any_checkpoint_does_not_name_one(tmp_path):
  pending = [{"finite": np.bool_(True)}, {"finite": np.bool_(False)}]
  ckpts = str(tmp_path / "checkpoints")
  with pytest.raises(wd.Diverged) as e:
    wd.fetch_finite(pending, 2, 0, ckpts, "parameters at search", lower={"hparams.a_lr": 3e-4})
  msg = str(e.value)
  assert "step 2" in msg and "step 0" not in msg and "no checkpoint" in msg and "\n" not in msg
  assert "start over" in msg and "--config.hparams.a_lr=3e-05" in msg
  with pytest.raises(wd.Diverged, match=r"step 7;.*checkpoint \(step 5\) is kept in .*checkpoints; .*resume "
                                        r"from step 5"):
    wd.fetch_finite(pending, 7, 5, ckpts, "parameters at search", lower={"hparams.a_lr": 3e-4})


def test_after_a_divergence_the_learning_rates_may_change_once_other_fields_may_not(tmp_path):
  d = str(tmp_path)
  hp = {"w_lr": None, "a_lr": None, "grad_clip": None}
  lower = {"hparams.w_lr": 1e-3, "hparams.a_lr": 1e-4}
  wd.prepare(d, {"seed": 0, "hparams": hp, "log_every": 1}, ignore=search.RESUMABLE_KEYS)
  with pytest.raises(wd.WorkdirError, match=r"differs in: hparams\.a_lr\)"):   # no NaN: the run is as it was
    wd.prepare(d, {"seed": 0, "hparams": {**hp, "a_lr": 1e-4}}, ignore=search.RESUMABLE_KEYS)
  with pytest.raises(wd.Diverged):
    wd.fetch_finite([{"finite": np.bool_(False)}], 4, 3, os.path.join(d, "checkpoints"), "search", lower=lower)
  with pytest.raises(wd.WorkdirError, match=r"differs in: hparams\.grad_clip\)"):
    wd.prepare(d, {"seed": 0, "hparams": {**hp, "a_lr": 1e-5, "grad_clip": 1.0}}, ignore=search.RESUMABLE_KEYS)
  assert wd.prepare(d, {"seed": 0, "hparams": {**hp, "a_lr": 1e-5, "w_lr": 1e-3}, "log_every": 5},
                    ignore=search.RESUMABLE_KEYS)
  assert json.load(open(os.path.join(d, "config.json")))["hparams"]["a_lr"] == 1e-5
  # What changed is on record, with the values before; the permission was for that one re-run.
  changes = [json.loads(l) for l in open(os.path.join(d, "config_changes.jsonl"))]
  assert changes[-1]["changed"]["hparams.a_lr"] == [None, 1e-5]
  assert not os.path.exists(os.path.join(d, wd.DIVERGED_FILE))
  with pytest.raises(wd.WorkdirError, match=r"hparams\.a_lr"):
    wd.prepare(d, {"seed": 0, "hparams": {**hp, "a_lr": 1e-6, "w_lr": 1e-3}}, ignore=search.RESUMABLE_KEYS)


_NB201 = ["--config=experiments/configs/fashion_search.py:smoke", "--config.space=nb201", "--config.model.N=1",
          "--config.model.C=4", "--config.subset=64", "--config.batch_size=8", "--config.epochs=2",
          "--config.steps_per_epoch=1", "--config.warmup_epochs=1", "--config.eval_examples=16",
          "--config.num_candidates=2", "--config.progress=False", "--config.tensorboard=False"]


@needs_fashion
def test_cli_nan_exit_2_then_lower_lr_resumes_then_damaged_checkpoint_falls_back(tmp_path):
  workdir = str(tmp_path / "w")
  run = lambda *extra: _script("search.py", *_NB201, f"--workdir={workdir}", *extra, timeout=600)
  # Epoch 1 trains the weights only (warm-up) and is checkpointed at step 1; α's first update, at step 2,
  # overflows with this learning rate.
  rc, err = run("--config.hparams.a_lr=1e38")
  line = _one_error_line(err)
  assert rc == 2, err[-3000:]
  assert "step 2" in line and "checkpoint (step 1)" in line and "--config.hparams.a_lr" in line, line
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["1"]
  # The message's advice: lower the learning rate and re-run; it resumes from step 1 and finishes.
  rc, err = run("--config.hparams.a_lr=3e-4")
  assert rc == 0, err[-3000:]
  records = wd.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in records if r["phase"] == "search"] == [1, 2]
  assert json.load(open(os.path.join(workdir, "summary.json")))["steps"] == 2
  # The newest checkpoint damaged: one warning line, the run falls back to step 1 and finishes again.
  _damage(os.path.join(workdir, "checkpoints", "2"))
  rc, err = run("--config.hparams.a_lr=3e-4")
  assert rc == 0, err[-3000:]
  report = ("genotype:", "final α entropy:", "search time:")
  warnings = [l for l in err.splitlines() if l.strip() and not l.startswith(report)]
  assert len(warnings) == 1 and warnings[0].startswith("warning: ") and "step 1" in warnings[0], err[-3000:]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]


def test_sigterm_at_the_epoch_end_an_early_stop_ends_on_raises_preempted_at_its_checkpoint():
  """A SIGTERM during the epoch-end work (evaluation, eigenvalue) after which ``stop`` ends the loop (DARTS-ES
  firing; DARTS-ADA then rolls back and loops again under a new watch) raises `Preempted` at that epoch's
  checkpoint instead of being dropped."""
  import signal  # pylint: disable=g-import-not-at-top
  from darts_jax import loop  # pylint: disable=g-import-not-at-top
  saved = []

  def on_epoch(step, epoch, *args):
    del step, args
    if epoch == 1:
      os.kill(os.getpid(), signal.SIGTERM)

  hooks = loop.Hooks(lambda at, state, seconds: saved.append(at), lambda pending, step, good: list(pending),
                     lambda step, fetched: None, on_epoch)
  with pytest.raises(wd.Preempted, match="SIGTERM at step 4 of 10"):
    loop.run(0, lambda state, step, batch: (state + 1, {"loss": float(step)}), iter(range(10)), hooks, start=0,
             total_steps=10, steps_per_epoch=2, log_every=1, directory="ckpt", stop=lambda: saved[-1] >= 4)
  assert saved == [2, 4]
