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

from darts_jax import genotypes
from test_networks import assert_matches_reference  # pylint: disable=g-import-not-at-top

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "networks"
FILES = sorted(FIXTURES.glob("eval_*.npz"))
KINDS = ("eval_cifar", "eval_imagenet")


def _genotype(f):
  return genotypes.canonical(genotypes.parse(str(f["genotype"])))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_fixture_matches_reference(path):
  assert_matches_reference(np.load(path))


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
