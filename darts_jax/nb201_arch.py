"""NAS-Bench-201 architectures and the tabular benchmark: what an NB201 cell is, without any network.

An NB201 architecture is a tuple of 6 op names, one per edge of the NB201 cell (`topology.NB201_CELL`) in its
edge order (0->1, 0->2, 1->2, 0->3, 1->3, 2->3), written in the benchmark's string form
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``. `is_connected` tells whether `none` edges cut the cell's input from
its output (such cells score chance level in the table); `zero_input_convs` names the conv edges fed
by a node that is always zero. `Benchmark` holds the NATS-Bench topology table;
`expected_best_of_n` is the random-search baseline computed exactly from it. The networks are in
`darts_jax.nb201`.
"""
from __future__ import annotations

import csv
import dataclasses
import itertools
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from darts_jax.topology import NB201_CELL, NB201_PRIMITIVES

Arch = Tuple[str, ...]
ArchLike = Union[str, Sequence[str]]

NUM_EDGES = NB201_CELL.num_edges
BENCHMARK_FILE = "nats_tss_200ep.csv"
DATASETS = ("cifar10", "cifar100", "imagenet16_120")

# --------------------------------------------------------------------------------------------------------
# Architectures.


def parse_arch(s: str) -> Arch:
  """Parses an NB201 architecture string (whitespace is ignored) into a tuple of 6 op names."""
  text = "".join(s.split())
  nodes = text.split("+")
  if len(nodes) != NB201_CELL.num_nodes:
    raise ValueError(f"NB201 architecture {s!r} has {len(nodes)} nodes separated by '+', expected "
                     f"{NB201_CELL.num_nodes}")
  by_edge: Dict[Tuple[int, int], str] = {}
  for j, node in enumerate(nodes, start=1):
    if len(node) < 2 or node[0] != "|" or node[-1] != "|":
      raise ValueError(f"NB201 architecture {s!r}: node {j} {node!r} must look like '|op~0|...|'")
    entries = node[1:-1].split("|")
    if len(entries) != j:
      raise ValueError(f"NB201 architecture {s!r}: node {j} has {len(entries)} entries, expected {j}")
    for i, entry in enumerate(entries):
      op, sep, src = entry.partition("~")
      if not sep or src != str(i):
        raise ValueError(f"NB201 architecture {s!r}: node {j} entry {entry!r} must read 'op~{i}'")
      if op not in NB201_PRIMITIVES:
        raise ValueError(f"NB201 architecture {s!r}: unknown op {op!r}; choose one of "
                         f"{', '.join(NB201_PRIMITIVES)}")
      by_edge[(i, j)] = op
  return tuple(by_edge[(e.src, e.dst)] for e in NB201_CELL.edges)


def as_arch(arch: ArchLike) -> Arch:
  """Canonical tuple form of an architecture given as a string or a sequence of 6 op names."""
  if isinstance(arch, str):
    return parse_arch(arch)
  arch = tuple(arch)
  if len(arch) != NUM_EDGES:
    raise ValueError(f"an NB201 architecture has {NUM_EDGES} ops, got {len(arch)}")
  for op in arch:
    if op not in NB201_PRIMITIVES:
      raise ValueError(f"unknown NB201 op {op!r}; choose one of {', '.join(NB201_PRIMITIVES)}")
  return arch


def arch_to_string(arch: ArchLike) -> str:
  arch = as_arch(arch)
  nodes = [[] for _ in range(NB201_CELL.num_nodes)]
  for e, op in zip(NB201_CELL.edges, arch):
    nodes[e.dst - 1].append(f"{op}~{e.src}")
  return "+".join("|" + "|".join(entries) + "|" for entries in nodes)


def enumerate_archs() -> List[Arch]:
  """All 5**6 architectures, edge 0 varying slowest, ops in `NB201_PRIMITIVES` order."""
  return list(itertools.product(NB201_PRIMITIVES, repeat=NUM_EDGES))


def arch_from_alphas(alphas) -> Arch:
  """NB201's DARTS discretization: the argmax op of every edge, `none` included.

  Unlike the DARTS space (which drops `none` and keeps two edges per node), every NB201 edge keeps exactly
  one op, so the result may contain `none` and a node may even be all-zero.
  """
  a = np.asarray(alphas)
  if a.shape != NB201_CELL.alpha_shape:
    raise ValueError(f"NB201 alphas must have shape {NB201_CELL.alpha_shape}, got {a.shape}")
  return tuple(NB201_PRIMITIVES[i] for i in np.argmax(a, axis=-1))


def _reached(ops_: Arch) -> set:
  """The nodes some path of non-``none`` edges leads to from the cell input (node 0); the others are zero."""
  reach = {0}
  for e, op in zip(NB201_CELL.edges, ops_):   # edges are ordered by destination, sources come first
    if op != "none" and e.src in reach:
      reach.add(e.dst)
  return reach


def is_connected(arch: ArchLike) -> bool:
  """Whether some path of non-``none`` edges leads from the cell input (node 0) to its output (node 3). A
  disconnected cell outputs zeros whatever its input: the network then cannot beat chance."""
  return NB201_CELL.num_inputs + NB201_CELL.num_nodes - 1 in _reached(as_arch(arch))


def zero_input_convs(arch: ArchLike) -> Tuple[int, ...]:
  """The edges whose op is a convolution and whose source node is zero whatever the input (no path of
  non-``none`` edges reaches it). Such a conv outputs its bias, the same at every position and example, and the
  BatchNorm after it (batch statistics) divides a zero variance by sqrt(eps): the output stays zero but its
  gradient is scaled by about 1/sqrt(eps). Proxies read off that layer's activations (fisher) see the
  amplification, and the rounding of the BatchNorm's mean decides part of it (experiments/results/README.md)."""
  ops_ = as_arch(arch)
  reach = _reached(ops_)
  return tuple(i for i, (e, op) in enumerate(zip(NB201_CELL.edges, ops_))
               if op.startswith("nor_conv") and e.src not in reach)


def random_arch(rng: Union[np.random.Generator, int, None] = None) -> Arch:
  rng = np.random.default_rng(rng)
  return tuple(NB201_PRIMITIVES[i] for i in rng.integers(0, len(NB201_PRIMITIVES), NUM_EDGES))


# --------------------------------------------------------------------------------------------------------
# The tabular benchmark.


def default_benchmark_path() -> Optional[Path]:
  """`$DARTS_JAX_BENCHMARK_DIR/nats_tss_200ep.csv`, else ../shared/benchmarks/ next to the repo, if it exists."""
  env = os.environ.get("DARTS_JAX_BENCHMARK_DIR")
  root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"
  path = root / BENCHMARK_FILE
  return path if path.is_file() else None


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """Accuracies of every NB201 cell. `columns` maps dataset names (e.g. "cifar10") to arrays over `archs`."""
  archs: Tuple[Arch, ...]
  columns: Dict[str, np.ndarray]
  index: Dict[Arch, int]

  def __len__(self) -> int:
    return len(self.archs)

  def accuracies(self, dataset: str = "cifar10") -> np.ndarray:
    key = dataset[:-len("_test_acc")] if dataset.endswith("_test_acc") else dataset
    if key not in self.columns:
      raise ValueError(f"unknown dataset {dataset!r}; the benchmark has {', '.join(self.columns)}")
    return self.columns[key]

  def query(self, arch: ArchLike, dataset: str = "cifar10") -> float:
    acc = self.accuracies(dataset)
    a = as_arch(arch)
    if a not in self.index:
      raise ValueError(f"architecture {arch_to_string(a)} is not in the benchmark")
    return float(acc[self.index[a]])

  def best(self, dataset: str = "cifar10") -> Tuple[Arch, float]:
    acc = self.accuracies(dataset)
    i = int(np.argmax(acc))
    return self.archs[i], float(acc[i])


def load_benchmark(path: Union[str, Path]) -> Benchmark:
  """Reads a CSV with an `arch` column and `<dataset>_test_acc` columns (see /work/shared/benchmarks)."""
  path = Path(path)
  if not path.is_file():
    raise ValueError(f"benchmark file {path} does not exist")
  with open(path, newline="") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if not header or header[0] != "arch":
      raise ValueError(f"{path}: the first column must be 'arch', got header {header}")
    names = [h[:-len("_test_acc")] for h in header[1:] if h.endswith("_test_acc")]
    if len(names) != len(header) - 1 or not names:
      raise ValueError(f"{path}: columns after 'arch' must be named '<dataset>_test_acc', got {header[1:]}")
    archs, values, index = [], [], {}
    for line, row in enumerate(reader, start=2):
      if len(row) != len(header):
        raise ValueError(f"{path}:{line}: expected {len(header)} fields, got {len(row)}")
      arch = parse_arch(row[0])
      if arch in index:
        raise ValueError(f"{path}:{line}: duplicate architecture {row[0]}")
      index[arch] = len(archs)
      archs.append(arch)
      try:
        values.append([float(v) for v in row[1:]])
      except ValueError:
        raise ValueError(f"{path}:{line}: non-numeric accuracy in {row[1:]}") from None
  table = np.asarray(values, np.float64).reshape(len(archs), len(names))
  table.flags.writeable = False
  return Benchmark(tuple(archs), {n: table[:, k] for k, n in enumerate(names)}, index)


def expected_best_of_n(accuracies, n: int) -> float:
  """Exact E[max accuracy] of n architectures drawn uniformly with replacement from `accuracies`.

  With a_(1) <= ... <= a_(M) sorted, P(max is the i-th order statistic's slot) = (i/M)^n - ((i-1)/M)^n;
  ties need no special care since tied values share one number.
  """
  if n < 1:
    raise ValueError(f"n={n}: need at least one draw")
  a = np.sort(np.asarray(accuracies, np.float64).ravel())
  if a.size == 0:
    raise ValueError("no accuracies given")
  cdf = np.arange(a.size + 1, dtype=np.float64) / a.size
  return float(np.sum(a * np.diff(cdf ** n)))


def random_search_curve(accuracies, ns: Iterable[int]) -> np.ndarray:
  """`expected_best_of_n` for every n in `ns`: the expected best of random search after n samples."""
  return np.array([expected_best_of_n(accuracies, int(n)) for n in ns])
