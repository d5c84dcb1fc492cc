"""Tests for darts_jax.xla_setup: the multi-seed compiler options compile; the compile cache goes where the user
says."""
import os
import subprocess
import sys

from darts_jax import xla_setup


def test_multi_seed_compiler_options_are_valid_and_cpu_only():
  import jax  # pylint: disable=g-import-not-at-top
  opts = xla_setup.cpu_compiler_options_without_ynn_reduce()
  assert opts == (xla_setup.YNN_DOTS_ONLY if jax.default_backend() == "cpu" else None)
  f = jax.jit(lambda a: (a @ a).sum(0), compiler_options=opts)
  assert float(f(jax.numpy.ones((4, 4)))[0]) == 16.0


def test_compilation_cache_default_user_choice_and_opt_out(tmp_path):
  run = lambda extra: subprocess.run(
      [sys.executable, "-c", "import jax; from darts_jax import xla_setup; "
       "print(repr(xla_setup.enable_compilation_cache())); print(repr(jax.config.jax_compilation_cache_dir))"],
      env={**{k: v for k, v in os.environ.items()
              if k not in ("JAX_COMPILATION_CACHE_DIR", "DARTS_JAX_NO_COMPILE_CACHE")}, **extra},
      capture_output=True, text=True, check=True).stdout.split()
  default = str(tmp_path / "xdg" / "darts_jax" / "jit")
  assert run({"XDG_CACHE_HOME": str(tmp_path / "xdg")}) == [repr(default)] * 2
  assert os.path.isdir(default)
  mine = str(tmp_path / "mine")
  assert run({"JAX_COMPILATION_CACHE_DIR": mine}) == [repr(mine)] * 2
  off = run({"XDG_CACHE_HOME": str(tmp_path / "off"), "DARTS_JAX_NO_COMPILE_CACHE": "1"})
  assert off[0] == "''" and not os.path.exists(tmp_path / "off")
