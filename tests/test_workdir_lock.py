"""One run per workdir, tried as a user would: a second search started on a workdir in use is refused in one
line naming the first process, which finishes as an undisturbed run would; a killed run's lock does not block
the re-run that resumes it."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from darts_jax import workdir as wd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "configs", "known_answer.py")


def _search(workdir, *extra):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "search.py"), f"--config={CONFIG}",
         f"--workdir={workdir}", "--config.epochs=12", "--config.steps_per_epoch=40", *extra]
  return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_lock(workdir, pid, timeout=120):
  path = os.path.join(workdir, wd.LOCK_FILE)
  t0 = time.time()
  while time.time() - t0 < timeout:
    try:
      if json.load(open(path)).get("pid") == pid:
        return
    except (OSError, ValueError):
      pass
    time.sleep(0.05)
  raise AssertionError(f"no lock of process {pid} in {workdir}")


def test_lock_is_per_process_and_released(tmp_path):
  wd.lock(str(tmp_path))
  wd.lock(str(tmp_path))                       # again in the same process: a no-op
  code = f"from darts_jax import workdir as wd; wd.lock({str(tmp_path)!r})"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
  assert out.returncode != 0 and f"in use by process {os.getpid()}" in out.stderr
  wd.unlock(str(tmp_path))
  assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_second_search_on_a_running_workdir_is_refused_and_the_first_finishes_undisturbed(tmp_path):
  shared = str(tmp_path / "shared")
  first = _search(shared)
  _wait_for_lock(shared, first.pid)
  second = _search(shared)
  _, err = second.communicate(timeout=600)
  assert second.returncode == 1
  lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and f"in use by process {first.pid}" in lines[0], err[-2000:]
  assert first.poll() is None, "the first search ended before the second was refused; the test proves nothing"
  first.communicate(timeout=600)
  assert first.returncode == 0
  alone = str(tmp_path / "alone")
  undisturbed = _search(alone)
  undisturbed.communicate(timeout=600)
  assert undisturbed.returncode == 0
  for name in ("genotype.txt",):
    assert open(os.path.join(shared, name)).read() == open(os.path.join(alone, name)).read()
  a, b = (json.load(open(os.path.join(d, "alphas.json")))["normal"] for d in (shared, alone))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  records = lambda d: [(r["step"], r["phase"], r.get("val_loss")) for r in wd.read_metrics(os.path.join(d,
                                                                                                  "metrics.jsonl"))]
  assert records(shared) == records(alone)      # one run's log, as the undisturbed run wrote it


def test_a_killed_runs_lock_does_not_block_its_resume(tmp_path):
  run = str(tmp_path / "run")
  first = _search(run, "--config.checkpoint_every=20")
  _wait_for_lock(run, first.pid)
  deadline = time.time() + 300
  while not os.path.isdir(os.path.join(run, "checkpoints")) and time.time() < deadline:
    time.sleep(0.1)
  os.kill(first.pid, signal.SIGKILL)
  first.communicate(timeout=60)
  assert json.load(open(os.path.join(run, wd.LOCK_FILE)))["pid"] == first.pid   # the file stays, the lock goes
  again = _search(run, "--config.checkpoint_every=20")
  _, err = again.communicate(timeout=600)
  assert again.returncode == 0, err[-2000:]
  assert os.path.exists(os.path.join(run, "genotype.txt"))


def test_a_finished_search_in_a_notebook_releases_its_workdir(tmp_path):
  """The lock lives as long as the run, not as long as the process: after `search.search` returns (as in a
  notebook), another process may run in the same workdir."""
  from darts_jax import search  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("ka_config", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.epochs, config.steps_per_epoch, config.progress, config.tensorboard = 1, 2, False, False
  workdir = str(tmp_path / "nb")
  search.search(config, workdir)
  code = f"from darts_jax import workdir as wd; wd.lock({workdir!r})"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr[-1000:]
