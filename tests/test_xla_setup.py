"""Tests for darts_jax.xla_setup: the workaround flags join the user's XLA_FLAGS without overriding them; the
compile cache goes where the user says."""
import os
import subprocess
import sys

from darts_jax import xla_setup


def test_configure_adds_workaround_once_and_keeps_user_flags():
  env = {"XLA_FLAGS": "--xla_backend_optimization_level=0"}
  out = xla_setup.configure(env)
  assert out.split() == ["--xla_backend_optimization_level=0", *xla_setup.WORKAROUND_FLAGS]
  assert xla_setup.configure(env) == out
  assert xla_setup.configure({}) == " ".join(xla_setup.WORKAROUND_FLAGS)


def test_configure_respects_a_user_setting_of_the_same_flag():
  name = xla_setup.WORKAROUND_FLAGS[0].split("=")[0]
  env = {"XLA_FLAGS": f"{name}=-eltwise"}
  assert xla_setup.configure(env) == f"{name}=-eltwise"


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
