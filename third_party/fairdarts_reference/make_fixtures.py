"""Writes reference fixtures of FairDARTS' final networks (``DCOCell``, the triple-form genotypes).

Each genotype is built as the released code's ``model.NetworkCIFAR(C, num_classes, layers, auxiliary, genotype,
parse_method='threshold_sparse')`` (any parse method other than ``'darts'`` selects ``DCOCell``), from the
unmodified ``model.py`` / ``operations.py`` / ``genotypes.py`` next to this file, at a small size, with its
BatchNorm affine parameters and running statistics set to random values, and run on the CPU in float32 in
evaluation mode and in training mode with drop path off. The ``.npz`` files have the layout of the
``eval_cifar`` fixtures of ``../shared/reference/README.md`` (the same as
``../darts_reference/make_network_fixtures.py`` writes, whose weight/statistics randomization and file writer
this script reuses) and go to ``tests/fixtures/networks/fairdarts_<name>.npz``:

    python third_party/fairdarts_reference/make_fixtures.py

Genotypes (``GENOTYPES``):
  * ``FairDARTS_a`` from the released ``genotypes.py``: the normal cell's node 3 has no edge, so the cell
    concatenates nodes 2, 4, 5 (3·C channels).
  * ``sparse_edges``, made up here to cover what the released genotypes do not: an edge whose input is an
    absent node (``DCOCell`` builds its op, so its weights are in the state dict, but skips it in ``forward``),
    edges with two ops on the same (node, input) (``threshold_edge`` style; ``DCOCell`` keeps them in one
    ``ModuleList`` ``_ops[node][input]``), interleaved with another input of the same node, a node whose only
    op is a stride-1 ``skip_connect`` (Identity), and, in the reduction cell, two ops on a stride-2 input.
    Its entries are in node order, as FairDARTS' ``parse`` writes them (``DCOCell`` computes the nodes in the
    order they first appear).

Sizes: C=8, 10 classes, auxiliary head, batch 2 at 32×32 with 3 channels; ``FairDARTS_a`` with 4 cells
(reductions at 1 and 2), ``sparse_edges`` with 6 cells (reductions at 2 and 4, so a normal cell also follows a
normal cell). Needs PyTorch (CPU); reruns are byte-identical.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT_DIR = ROOT / "tests" / "fixtures" / "networks"

C, NUM_CLASSES, BATCH, SIZE, SEED = 8, 10, 2, 32, 0
PARSE_METHOD = "threshold_sparse"

SPARSE_EDGES = dict(
    normal=[('sep_conv_3x3', 2, 0), ('dil_conv_3x3', 2, 1),
            ('sep_conv_5x5', 4, 3),  # node 3 has no edge: skipped by DCOCell (its weights are still there)
            ('skip_connect', 4, 1),  # node 4 is then one Identity
            ('sep_conv_3x3', 5, 1), ('max_pool_3x3', 5, 4), ('dil_conv_5x5', 5, 1),  # two ops on (5, 1)
            ('sep_conv_3x3', 5, 2)],
    normal_concat=range(2, 6),
    reduce=[('skip_connect', 2, 0), ('sep_conv_3x3', 2, 0),  # two ops on a stride-2 input
            ('avg_pool_3x3', 3, 1), ('dil_conv_3x3', 3, 2),
            ('sep_conv_3x3', 5, 4),  # node 4 has no edge: skipped
            ('max_pool_3x3', 5, 1), ('skip_connect', 5, 3)],
    reduce_concat=range(2, 6))

# (fixture name, genotype: a name in the released genotypes.py or the fields of one, layers)
GENOTYPES = [("a", "FairDARTS_a", 4), ("sparse_edges", SPARSE_EDGES, 6)]


def _import_reference():
  """The released modules. model.py does `from utils import drop_path`; the released utils.py imports
  torchvision and its auto_augment.py and draws the mask as a `torch.cuda.FloatTensor`, so a stand-in `utils`
  module whose `drop_path` is the same function on the CPU is installed instead (never active here:
  drop_path_prob = 0)."""
  utils = types.ModuleType("utils")

  def drop_path(x, drop_prob):
    if drop_prob > 0.:
      keep_prob = 1. - drop_prob
      mask = torch.empty(x.size(0), 1, 1, 1).bernoulli_(keep_prob)
      x.div_(keep_prob)
      x.mul_(mask)
    return x

  utils.drop_path = drop_path
  saved = {k: sys.modules.pop(k) for k in ("utils", "model", "operations", "genotypes") if k in sys.modules}
  sys.modules["utils"] = utils
  sys.path.insert(0, str(HERE))
  try:
    import genotypes as ref_genotypes  # pylint: disable=g-import-not-at-top
    import model as ref_model  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(str(HERE))
    for k in ("utils", "model", "operations", "genotypes"):
      sys.modules.pop(k, None)
    sys.modules.update(saved)
  return ref_genotypes, ref_model


def _darts_fixture_tools():
  """../darts_reference/make_network_fixtures.py, for its weight grid, BatchNorm randomization and writer."""
  spec = importlib.util.spec_from_file_location("_darts_make_network_fixtures",
                                                HERE.parent / "darts_reference" / "make_network_fixtures.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def genotype_text(g) -> str:
  """The released genotypes.py's form, e.g. `Genotype(normal=[('sep_conv_3x3', 2, 0), ...],
  normal_concat=range(2, 6), ...)`, which `darts_jax.genotypes.parse` reads."""
  return str(g)


def make_fixture(genotype, layers: int, ref_model, tools) -> dict:
  gen = torch.Generator().manual_seed(SEED)
  torch.manual_seed(SEED)
  with contextlib.redirect_stdout(io.StringIO()):
    net = ref_model.NetworkCIFAR(C, NUM_CLASSES, layers, True, genotype, parse_method=PARSE_METHOD)
  assert all(type(c).__name__ == "DCOCell" for c in net.cells)
  net.drop_path_prob = 0.0
  x = torch.round(8 * torch.randn(BATCH, 3, SIZE, SIZE, generator=gen)) / 8
  tools._grid_weights(net)  # pylint: disable=protected-access
  tools._randomize_batchnorm(net, x, gen)  # pylint: disable=protected-access
  state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
  with torch.no_grad():
    for v in state.values():
      v.copy_(torch.from_numpy(tools._round8(v.numpy())))  # pylint: disable=protected-access
  params = dict(net.named_parameters())
  fixture = {"kind": np.array("eval_cifar"), "C": np.array(C), "num_classes": np.array(NUM_CLASSES),
             "layers": np.array(layers), "auxiliary": np.array(True), "genotype": np.array(genotype_text(genotype)),
             "parse_method": np.array(PARSE_METHOD)}
  for k, v in state.items():
    fixture[("param/" if k in params else "buffer/") + k] = v.numpy().copy()
  fixture["x"] = x.numpy()
  with torch.no_grad():
    net.eval()
    logits_eval, _ = net(x.clone())
    net.train()
    logits_train, logits_aux = net(x.clone())
  fixture["out/logits_eval"] = logits_eval.numpy()
  fixture["out/logits_train"] = logits_train.numpy()
  fixture["out/logits_aux_train"] = logits_aux.numpy()
  # Parameters as the paper counts them: DCOCell builds the ops of skipped edges too, so their weights are in
  # the state dict but take no part in the network; they are left out here (darts_jax does not build them).
  skipped = skipped_prefixes(net)
  used = {k: v for k, v in params.items() if not any(k.startswith(p) for p in skipped)}
  fixture["out/num_params"] = np.array(sum(v.numel() for k, v in used.items() if "auxiliary" not in k))
  fixture["out/num_params_auxiliary"] = np.array(sum(v.numel() for k, v in used.items() if "auxiliary" in k))
  fixture["out/num_params_with_skipped"] = np.array(
      sum(v.numel() for k, v in params.items() if "auxiliary" not in k))
  return fixture


def skipped_prefixes(net) -> list[str]:
  """`cells.{i}._ops.{node}.{input}.` of the edges DCOCell.forward skips (input not computed before)."""
  out = []
  for i, cell in enumerate(net.cells):
    done = {"0", "1"}
    for to_i, ops in cell._ops.items():  # pylint: disable=protected-access
      out += [f"cells.{i}._ops.{to_i}.{from_i}." for from_i in ops if from_i not in done]
      done.add(to_i)
  return out


def main() -> None:
  torch.use_deterministic_algorithms(True)
  torch.set_num_threads(min(2, os.cpu_count() or 1))
  ref_genotypes, ref_model = _import_reference()
  tools = _darts_fixture_tools()
  OUT_DIR.mkdir(parents=True, exist_ok=True)
  for name, g, layers in GENOTYPES:
    genotype = getattr(ref_genotypes, g) if isinstance(g, str) else ref_genotypes.Genotype(**g)
    path = OUT_DIR / f"fairdarts_{name}.npz"
    tools.save_npz(path, make_fixture(genotype, layers, ref_model, tools))
    print(f"{path.relative_to(ROOT)}: {g if isinstance(g, str) else name}, {layers} cells, "
          f"{path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
  main()
