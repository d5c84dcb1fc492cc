"""Search spaces: a cell `Topology` and what a space does with it.

A space is a frozen dataclass (hashable: jitted functions take it as a static argument). Its fields describe
the cell (`darts_jax.topology`); its methods are what the search loop, the methods and the comparison runner
ask of it: α's initialization, the discretization of op strengths (`derive`), random architectures
(`random_arch`, `random_path`), the architecture's text/JSON forms, pictures and comparison statistics. The
loop never asks which space it runs. `SearchSpace` is the DARTS family (cells of two inputs, intermediate
nodes that keep `inputs_per_node` edges, concatenated output; `darts_jax.genotypes`); `NB201Space` overrides
what NAS-Bench-201 does otherwise (`darts_jax.nb201_arch`), `SingleEdgeSpace` what a one-edge network does
(for tasks with a known answer). Another space plugs in as a subclass. A space knows no network: its search
network is built by `darts_jax.models.build_supernet`, one layer up.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from darts_jax import genotypes, nb201_arch, visualize
from darts_jax.topology import DARTS_PRIMITIVES, NB201_PRIMITIVES, Edge, Topology

__all__ = ["DARTS_PRIMITIVES", "NB201_PRIMITIVES", "Edge", "Topology", "SearchSpace", "NB201Space",
           "SingleEdgeSpace", "DARTS_SPACE", "NB201_SPACE", "SINGLE_EDGE_SPACE", "SPACES", "get_space"]


@dataclasses.dataclass(frozen=True)
class SearchSpace(Topology):
  """A cell search space: the DARTS family (`Topology`'s fields describe its cell)."""

  # ------------------------------------------------------------------------------------------------------
  # What the search loop, the methods and the comparison runner ask of a space.

  @property
  def cell_names(self) -> Tuple[str, ...]:
    """The cell kinds with α of their own (keys of α and of the op weights)."""
    return ("normal", "reduce")

  @property
  def scalar_unsampled_ops(self) -> bool:
    """Whether the released code's cell of this space adds the op weights of the ops a hard sample did not
    pick as zero-valued scalars (AutoDL's NAS201SearchCell.forward_gdas), which lets GDAS' straight-through
    gradient reach their α; DARTS-space cells run the sampled op alone."""
    return False

  @property
  def retrainable(self) -> bool:
    """Whether a discovered architecture is retrained from scratch to score it (else looked up, `arch_stats`)."""
    return True

  def init_alphas(self, key, scale: float = 1e-3) -> Dict[str, Any]:
    """α per cell kind, scale·N(0, 1) (the reference's 1e-3)."""
    keys = jax.random.split(key, len(self.cell_names))
    return {cell: scale * jax.random.normal(k, self.alpha_shape, jnp.float32)
            for cell, k in zip(self.cell_names, keys)}

  def derive(self, op_weights: Dict[str, Any]):
    """The discrete architecture of per-edge op strengths: per node, the `inputs_per_node` edges with the
    strongest non-``none`` op, each with that op (`genotypes.derive_genotype` on the weights as given)."""
    w = {k: np.asarray(v, np.float64) for k, v in op_weights.items()}
    return genotypes.derive_genotype(w["normal"], w["reduce"], self.primitives, steps=self.num_nodes,
                                     k=self.inputs_per_node, multiplier=self.num_nodes, weights_fn=lambda a: a)

  def derive_threshold(self, op_weights: Dict[str, Any], threshold: float, parse: str):
    """FairDARTS' threshold discretization (`genotypes.derive_threshold`): triple-form genotypes that may drop
    edges and nodes."""
    w = {k: np.asarray(v, np.float64) for k, v in op_weights.items()}
    return genotypes.derive_threshold(w["normal"], w["reduce"], self.primitives, steps=self.num_nodes,
                                      threshold=threshold, parse=parse, multiplier=self.num_nodes)

  def random_arch(self, rng: np.random.Generator):
    """A uniformly random architecture: per node, `inputs_per_node` distinct inputs, each with a uniform
    non-``none`` op (`genotypes.random_genotype`)."""
    return genotypes.random_genotype(rng, self.primitives, steps=self.num_nodes, k=self.inputs_per_node)

  @property
  def arch_ops(self) -> Tuple[str, ...]:
    """The ops a discrete architecture of the space can use (``none`` is not one in DARTS' cells)."""
    return tuple(p for p in self.primitives if p != "none")

  def _random_ops(self) -> np.ndarray:
    return np.array([self.primitive_index(p) for p in self.arch_ops])

  def random_path(self, key) -> Dict[str, Any]:
    """One-hot op weights of a uniformly random discrete architecture per cell kind (traceable): per node,
    `inputs_per_node` distinct inputs with a uniform non-``none`` op, weight 0 on the other edges (Li &
    Talwalkar's `sample_arch`, minus ``none``)."""
    ops = self._random_ops()
    out = {}
    for c_i, cell in enumerate(self.cell_names):
      k_op, k_in = jax.random.split(jax.random.fold_in(key, c_i))
      w = jax.nn.one_hot(jnp.asarray(ops)[jax.random.randint(k_op, (self.num_edges,), 0, len(ops))],
                         self.num_ops)
      out[cell] = self._path_mask(k_in, w)
    return out

  def _path_mask(self, key, w):
    masks = []
    for n_i in range(self.num_nodes):
      n = self.num_inputs + n_i
      perm = jax.random.permutation(jax.random.fold_in(key, n_i), n)
      masks.append(jnp.zeros((n,)).at[perm[:min(self.inputs_per_node, n)]].set(1.0))
    return w * jnp.concatenate(masks)[:, None]

  def arch_text(self, arch) -> str:
    """The architecture's text form (the reference's ``Genotype(...)``)."""
    return genotypes.to_text(arch)

  def arch_json(self, arch) -> Any:
    """The architecture as JSON data (`genotypes.to_dict`)."""
    return genotypes.to_dict(arch)

  def cell_ops(self, arch) -> Optional[List[str]]:
    """The ops of the (normal) cell of an architecture or of its text / JSON form; None if it is not one."""
    try:
      if isinstance(arch, str):
        arch = genotypes.parse(arch)
      elif isinstance(arch, dict):
        arch = genotypes.from_dict(arch)
      return [op for op, _, _ in genotypes.cell_edges(arch, "normal")]
    except Exception:  # pylint: disable=broad-except  (anything else: not a cell)
      return None

  @property
  def cell_ops_description(self) -> str:
    """Which edges `cell_ops` lists, for reports."""
    return "the normal-cell edges of the final genotypes"

  def plot_arch(self, arch, workdir: str) -> List[str]:
    """Pictures of the architecture's cells in `workdir` (``cells_normal``/``cells_reduce`` .png/.svg)."""
    return visualize.plot_genotype(arch, os.path.join(workdir, "cells"))

  def arch_stats(self, arch, benchmark=None, dataset: str = "cifar10") -> Dict[str, Any]:
    """Per-architecture figures a comparison reports beside the searches' (the space's own columns)."""
    del arch, benchmark, dataset
    return {}

  # Columns of `arch_stats` in a comparison table: (key, header, digits); a count of runs where the stat is
  # a bool.
  stat_columns: ClassVar[Tuple[Tuple[str, str, int], ...]] = ()
  # Paragraphs a comparison report adds under the space's table.
  report_notes: ClassVar[Tuple[str, ...]] = ()

  @property
  def has_benchmark(self) -> bool:
    """Whether the space has a table of trained architectures (`load_benchmark`)."""
    return False

  def load_benchmark(self, path=None):
    """(table, path) of the space's benchmark table at `path` or its default place; (None, None) if none."""
    del path
    return None, None


def _one_cell_alphas(space: SearchSpace, key, scale: float) -> Dict[str, Any]:
  """α of a space whose cells share one α (NB201, the single edge): scale·N(0, 1) under "normal"."""
  return {"normal": scale * jax.random.normal(key, space.alpha_shape, jnp.float32)}


@dataclasses.dataclass(frozen=True)
class NB201Space(SearchSpace):
  """NAS-Bench-201: one α shared by every cell, every edge keeps one op (``none`` included), the cell
  outputs its last node, architectures are scored by the benchmark's table (`darts_jax.nb201_arch`)."""
  stat_columns: ClassVar[Tuple[Tuple[str, str, int], ...]] = (
      ("network_params", "network params (C=16, N=5)", 0),
      ("benchmark_test_acc", "NB201 benchmark test acc (%)", 2),
      ("disconnected", "disconnected cells", 0),
  )
  report_notes: ClassVar[Tuple[str, ...]] = (
      "Disconnected cells: `none` edges cut every path from the cell's input to its output, so the cell "
      "outputs zeros (every such cell of the table scores 10%, chance level).",)

  @property
  def has_benchmark(self) -> bool:
    return True

  def load_benchmark(self, path=None):
    """The NATS-Bench topology table (`nb201_arch.load_benchmark`) at `path` or `nb201_arch.default_benchmark_path()`."""
    path = path or nb201_arch.default_benchmark_path()
    return (nb201_arch.load_benchmark(path), str(path)) if path else (None, None)

  @property
  def cell_names(self) -> Tuple[str, ...]:
    return ("normal",)

  @property
  def scalar_unsampled_ops(self) -> bool:
    return True

  @property
  def retrainable(self) -> bool:
    return False

  def init_alphas(self, key, scale: float = 1e-3) -> Dict[str, Any]:
    return _one_cell_alphas(self, key, scale)

  def derive(self, op_weights: Dict[str, Any]):
    """Every edge's argmax op, ``none`` included (`nb201_arch.arch_from_alphas`)."""
    return nb201_arch.arch_from_alphas(np.asarray(op_weights["normal"], np.float64))

  def derive_threshold(self, op_weights: Dict[str, Any], threshold: float, parse: str):
    """Every edge keeps one op in NAS-Bench-201: the per-edge argmax, whatever the threshold."""
    del threshold, parse
    return self.derive(op_weights)

  def random_arch(self, rng: np.random.Generator):
    """A uniform op per edge, ``none`` included (`nb201_arch.random_arch`)."""
    return nb201_arch.random_arch(rng)

  @property
  def arch_ops(self) -> Tuple[str, ...]:
    return self.primitives

  def _path_mask(self, key, w):
    return w

  def arch_text(self, arch) -> str:
    return nb201_arch.arch_to_string(arch)

  def arch_json(self, arch) -> Any:
    return {"nb201": self.arch_text(arch)}

  def cell_ops(self, arch) -> Optional[List[str]]:
    if isinstance(arch, dict) and "nb201" in arch:
      arch = arch["nb201"]
    try:
      return list(nb201_arch.as_arch(arch))
    except Exception:  # pylint: disable=broad-except
      return None

  @property
  def cell_ops_description(self) -> str:
    return "the 6 edges of the discovered cells"

  def plot_arch(self, arch, workdir: str) -> List[str]:
    return visualize.plot_nb201(arch, os.path.join(workdir, "cell"))

  def arch_stats(self, arch, benchmark=None, dataset: str = "cifar10") -> Dict[str, Any]:
    """Whether `none` edges disconnect the cell, and the benchmark table's test accuracy (when a table is
    given); `models.arch_stats` adds the final network's parameter count."""
    out: Dict[str, Any] = {}
    try:
      out["disconnected"] = not nb201_arch.is_connected(arch)
    except (ValueError, KeyError, TypeError):
      out["disconnected"] = False
    if benchmark is not None:
      try:
        out["benchmark_test_acc"] = benchmark.query(arch, dataset)
      except (ValueError, KeyError, TypeError):
        out["benchmark_test_acc"] = None
    return out


@dataclasses.dataclass(frozen=True)
class SingleEdgeSpace(SearchSpace):
  """One mixed edge from the image to a fixed head (`darts_jax.single_edge`): an architecture is one op, the
  strongest non-``none`` one. For tasks whose answer is known by construction (`darts_jax.known_answer`); the
  model block's ``primitives`` pick the candidates (`single_edge.parse_primitives`), which the built model's
  space carries."""

  @property
  def cell_names(self) -> Tuple[str, ...]:
    return ("normal",)

  @property
  def retrainable(self) -> bool:
    return False

  def init_alphas(self, key, scale: float = 1e-3) -> Dict[str, Any]:
    return _one_cell_alphas(self, key, scale)

  def derive(self, op_weights: Dict[str, Any]) -> str:
    """The edge's strongest op other than ``none``."""
    w = np.asarray(op_weights["normal"], np.float64).reshape(-1)
    order = [i for i in np.argsort(-w, kind="stable") if self.primitives[i] != "none"]
    return self.primitives[order[0]]

  def derive_threshold(self, op_weights: Dict[str, Any], threshold: float, parse: str) -> str:
    del threshold, parse
    return self.derive(op_weights)

  def random_arch(self, rng: np.random.Generator) -> str:
    ops = self.arch_ops
    return ops[int(rng.integers(len(ops)))]

  def arch_text(self, arch) -> str:
    return str(arch)

  def arch_json(self, arch) -> Any:
    return {"op": str(arch), "primitives": list(self.primitives)}

  def cell_ops(self, arch) -> Optional[List[str]]:
    if isinstance(arch, dict):
      arch = arch.get("op")
    return [arch] if isinstance(arch, str) and arch in self.primitives else None

  @property
  def cell_ops_description(self) -> str:
    return "the edge's op"

  def plot_arch(self, arch, workdir: str) -> List[str]:
    return visualize.plot_single_edge(str(arch), os.path.join(workdir, "cell"))


DARTS_SPACE = SearchSpace(name="darts", primitives=DARTS_PRIMITIVES, num_inputs=2, num_nodes=4,
                          inputs_per_node=2, output="concat")

NB201_SPACE = NB201Space(name="nb201", primitives=NB201_PRIMITIVES, num_inputs=1, num_nodes=3,
                          inputs_per_node=None, output="last", pool_batch_norm=False)

SINGLE_EDGE_SPACE = SingleEdgeSpace(name="single_edge", primitives=DARTS_PRIMITIVES, num_inputs=1, num_nodes=1,
                                    inputs_per_node=1, output="last")

SPACES = {s.name: s for s in (DARTS_SPACE, NB201_SPACE, SINGLE_EDGE_SPACE)}


def get_space(name: str) -> SearchSpace:
  try:
    return SPACES[name]
  except KeyError:
    raise ValueError(f"unknown search space {name!r}; choose one of {', '.join(sorted(SPACES))}") from None
