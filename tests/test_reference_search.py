"""The search network against the original PyTorch DARTS code (../shared/reference/search_c8_l5.npz).

Tolerances are the fixture README's. The second-order hypergradients are minutes of XLA compilation on a
CPU each, so they are marked slow (CI runs them in a second pass).
"""
import numpy as np
import pytest

from darts_jax import genotypes
from darts_jax import interop


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def _fixture(reference_file):
  f = np.load(reference_file("search_c8_l5.npz"))
  inputs = {k: f[k] for k in f.files if not k.startswith("out/")}
  expected = {k[4:]: f[k] for k in f.files if k.startswith("out/")}
  return inputs, expected


def _check_grads(out, expected, key, tol):
  for cell in ("normal", "reduce"):
    name = f"{key}_alphas_{cell}"
    assert out[name].shape == expected[name].shape
    assert _rel(out[name], expected[name]) <= tol, (name, _rel(out[name], expected[name]))


def test_logits_loss_first_order_and_genotype(reference_file):
  inputs, expected = _fixture(reference_file)
  out = interop.compute_reference_outputs(inputs, keys=("logits", "loss", "grad1"))
  assert _rel(out["logits"], expected["logits"]) <= 1e-4
  assert abs(float(out["loss"]) - float(expected["loss"])) <= 1e-4 * abs(float(expected["loss"]))
  _check_grads(out, expected, "grad1", 1e-3)
  assert genotypes.parse(out["genotype"]) == genotypes.parse(str(expected["genotype"]))
  assert out["genotype"] == str(expected["genotype"])


@pytest.mark.slow
def test_second_order_exact(reference_file):
  inputs, expected = _fixture(reference_file)
  out = interop.compute_reference_outputs(inputs, keys=("grad2exact",))
  _check_grads(out, expected, "grad2exact", 2e-3)


@pytest.mark.slow
def test_second_order_finite_difference(reference_file):
  inputs, expected = _fixture(reference_file)
  out = interop.compute_reference_outputs(inputs, keys=("grad2fd",))
  _check_grads(out, expected, "grad2fd", 2e-2)
