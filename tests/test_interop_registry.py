"""Every published genotype, as the CIFAR and the ImageNet network, loads the original PyTorch code's weights
and reproduces its outputs.

Fixtures: tests/fixtures/networks/eval_{cifar,imagenet}_<name>.npz, written by
third_party/darts_reference/make_network_fixtures.py from the unmodified reference model.py (C=8, 4 cells,
auxiliary head, random BatchNorm parameters and statistics); layout and tolerances as in
../shared/reference/README.md.
"""
import pathlib

import numpy as np
import pytest

from darts_jax import genotypes, interop

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "networks"
FILES = sorted(FIXTURES.glob("eval_*.npz"))
KINDS = ("eval_cifar", "eval_imagenet")


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def _genotype(f):
  return genotypes.canonical(genotypes.parse(str(f["genotype"])))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_fixture_matches_reference(path):
  f = np.load(path)
  inputs = {k: f[k] for k in f.files if not k.startswith("out/")}
  out = interop.compute_reference_outputs(inputs)
  for key in ("logits_eval", "logits_train", "logits_aux_train"):
    assert out[key].shape == f[f"out/{key}"].shape, key
    err = _rel(out[key], f[f"out/{key}"])
    assert err <= 1e-4, (key, err)
  assert out["num_params"] == int(f["out/num_params"])
  assert out["num_params_auxiliary"] == int(f["out/num_params_auxiliary"])


def test_every_registry_genotype_has_fixtures():
  have = {kind: [] for kind in KINDS}
  for path in FILES:
    f = np.load(path)
    have[str(f["kind"])].append(_genotype(f))
  for name, g in genotypes.PUBLISHED.items():  # aliases share their target's fixtures
    for kind in KINDS:
      assert genotypes.canonical(g) in have[kind], (
          f"no {kind} fixture for registry genotype {name}: run "
          f"python third_party/darts_reference/make_network_fixtures.py {name}")
