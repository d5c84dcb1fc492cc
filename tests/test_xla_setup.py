"""Tests for darts_jax.xla_setup: the workaround flags join the user's XLA_FLAGS without overriding them."""
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
