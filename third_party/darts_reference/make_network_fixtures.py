"""Writes reference fixtures of the final DARTS networks for every genotype of `darts_jax.genotypes.PUBLISHED`.

Each registry genotype is built as the original code's `model.NetworkCIFAR` and `model.NetworkImageNet` (the
unmodified `model.py` / `operations.py` / `genotypes.py` next to this file), at a small size, with its BatchNorm
affine parameters and running statistics set to random values, and run on the CPU in float32 in evaluation
and training mode. The `.npz` files have the layout of the `eval_cifar` / `eval_imagenet` fixtures of
`../shared/reference/README.md` and go to `tests/fixtures/networks/`:

    python third_party/darts_reference/make_network_fixtures.py            # all of them
    python third_party/darts_reference/make_network_fixtures.py AmoebaNet  # some of them

Needs PyTorch (CPU is enough) and darts_jax (only for the registry: genotypes the reference's genotypes.py
lacks, and the check that those it has agree with it). Torch's CPU kernels are deterministic here, so a rerun
writes the same values.

Sizes (small, so the files are small and the JAX tests compile quickly): C=8, 4 cells (reduction cells at 1
and 2, so a normal cell follows a normal cell, a reduction after a normal cell, a reduction after a reduction
and a normal cell after a reduction), 10 classes, the auxiliary head; CIFAR batch 2 at 32×32, ImageNet batch 1
at 224×224 (the reference's global AvgPool2d(7) and its ImageNet auxiliary head need a 7×7 final map).
One more file, `eval_cifar_darts_v2_layers3.npz`, has 3 cells: the auxiliary head then follows the last cell,
and its in-place ReLU rectifies what the classifier pools in training mode.

To keep the files small (0.4-0.65 MB each), the stored floats have few significant bits, set *before*
the reference runs, and the files are compressed: every convolution and linear weight is drawn uniformly from
PyTorch's default range ±1/sqrt(fan_in), from a generator seeded by its name, and rounded to a power-of-two
grid of 1/8 of that range (13 levels); the input is a standard normal rounded to multiples of 1/8; the
BatchNorm parameters and statistics and the linear biases are rounded to 8 significant bits (bfloat16's
precision), all stored as float32. The outputs are the reference's float32 outputs on exactly the stored
values.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import types
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT_DIR = ROOT / "tests" / "fixtures" / "networks"

C, LAYERS, NUM_CLASSES = 8, 4, 10
EXTRA = [("DARTS_V2", "cifar", 3)]  # (registry name, kind, layers) beside every genotype at LAYERS
BATCH = {"cifar": 2, "imagenet": 1}
SIZE = {"cifar": 32, "imagenet": 224}
SEED = 0


def _import_reference():
  """The reference's modules. Its model.py does `from utils import drop_path`; utils.py also imports
  torchvision and builds CUDA tensors, so a stand-in `utils` module with a CPU drop_path is installed instead
  (drop path is never active here: drop_path_prob = 0)."""
  if "utils" not in sys.modules or not hasattr(sys.modules["utils"], "drop_path"):
    utils = types.ModuleType("utils")

    def drop_path(x, drop_prob):
      if drop_prob > 0.:
        keep_prob = 1. - drop_prob
        mask = torch.empty(x.size(0), 1, 1, 1).bernoulli_(keep_prob)
        x.div_(keep_prob)
        x.mul_(mask)
      return x

    utils.drop_path = drop_path
    sys.modules["utils"] = utils
  sys.path.insert(0, str(HERE))
  try:
    import genotypes as ref_genotypes  # pylint: disable=g-import-not-at-top
    import model as ref_model  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(str(HERE))
  return ref_genotypes, ref_model


def registry_genotypes(ref_genotypes):
  """name -> (reference Genotype namedtuple, where it came from), one entry per distinct registry genotype
  (aliases such as DARTS = DARTS_V2 left out)."""
  from darts_jax import genotypes as dj  # pylint: disable=g-import-not-at-top
  out, seen = {}, []
  for name, g in dj.PUBLISHED.items():
    g = dj.canonical(g)
    if g in seen:
      continue
    seen.append(g)
    if hasattr(ref_genotypes, name):
      ref = getattr(ref_genotypes, name)
      if dj.canonical(dj.make_genotype(*ref)) != g:
        raise SystemExit(f"{name}: the reference's genotypes.py and darts_jax's registry disagree")
      out[name] = (ref, "reference genotypes.py")
    else:  # PC_DARTS, PC_DARTS_IMAGENET, PDARTS, GDAS_V1: not in quark0/darts
      out[name] = (ref_genotypes.Genotype(list(g.normal), list(g.normal_concat), list(g.reduce),
                                          list(g.reduce_concat)), "darts_jax.genotypes.PUBLISHED")
  return out


def _round8(a: np.ndarray) -> np.ndarray:
  """float32 rounded to 8 significant bits (round to nearest even on the bit pattern)."""
  b = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
  b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
  return b.astype(np.uint32).view(np.float32)


def _grid_weights(net: nn.Module) -> None:
  """Convolution and linear weights: uniform in ±1/sqrt(fan_in), on a grid of 1/8 of that bound."""
  with torch.no_grad():
    for name, p in net.named_parameters():
      if p.dim() < 2:
        continue
      bound = 1.0 / np.sqrt(p[0].numel())
      gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
      step = 2.0 ** (np.ceil(np.log2(bound)) - 3)
      w = (2 * torch.rand(p.shape, generator=gen) - 1) * bound
      p.copy_(torch.round(w / step) * step)


def _randomize_batchnorm(net: nn.Module, x: torch.Tensor, gen: torch.Generator) -> None:
  """Random affine parameters; running statistics near the batch statistics of this input (so evaluation
  mode stays well scaled) but randomly off them (so every one of them matters)."""
  bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
  with torch.no_grad():
    for m in bns:
      m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
      m.bias.copy_(0.4 * torch.rand(m.bias.shape, generator=gen) - 0.2)
    # One training-mode pass with momentum 1 sets the running statistics to this batch's (auxiliary head
    # included), then they are perturbed.
    momenta = [m.momentum for m in bns]
    for m in bns:
      m.momentum = 1.0
    net.train()
    net(x)
    for m, mom in zip(bns, momenta):
      m.momentum = mom
      std = m.running_var.sqrt()
      m.running_mean.add_(0.2 * std * torch.randn(m.running_mean.shape, generator=gen))
      m.running_var.mul_(0.6 + 0.8 * torch.rand(m.running_var.shape, generator=gen))


def make_fixture(genotype, kind: str, ref_model, layers: int = LAYERS) -> dict:
  gen = torch.Generator().manual_seed(SEED)
  torch.manual_seed(SEED)
  cls = ref_model.NetworkCIFAR if kind == "cifar" else ref_model.NetworkImageNet
  with contextlib.redirect_stdout(io.StringIO()):  # the reference's Cell prints its channel counts
    net = cls(C, NUM_CLASSES, layers, True, genotype)
  net.drop_path_prob = 0.0
  x = torch.round(8 * torch.randn(BATCH[kind], 3, SIZE[kind], SIZE[kind], generator=gen)) / 8
  _grid_weights(net)
  _randomize_batchnorm(net, x, gen)
  # Round the rest (grid values are already exact), then run the reference on exactly what is stored.
  state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
  with torch.no_grad():
    for v in state.values():
      v.copy_(torch.from_numpy(_round8(v.numpy())))
  params = dict(net.named_parameters())
  fixture = {"kind": np.array(f"eval_{kind}"), "C": np.array(C), "num_classes": np.array(NUM_CLASSES),
             "layers": np.array(layers), "auxiliary": np.array(True), "genotype": np.array(str(genotype))}
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
  fixture["out/num_params"] = np.array(sum(v.numel() for k, v in params.items() if "auxiliary" not in k))
  fixture["out/num_params_auxiliary"] = np.array(sum(v.numel() for k, v in params.items() if "auxiliary" in k))
  return fixture


def save_npz(path: Path, arrays: dict) -> None:
  """np.savez_compressed with fixed zip timestamps, so that regenerating unchanged fixtures changes no byte."""
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    for key, value in arrays.items():
      info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_DEFLATED
      with z.open(info, "w", force_zip64=True) as fh:
        np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)


def fixture_path(name: str, kind: str, layers: int = LAYERS) -> Path:
  return OUT_DIR / f"eval_{kind}_{name.lower()}{'' if layers == LAYERS else f'_layers{layers}'}.npz"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("names", nargs="*", help="registry names (default: every distinct registry genotype)")
  args = parser.parse_args(argv)
  torch.use_deterministic_algorithms(True)
  torch.set_num_threads(min(2, os.cpu_count() or 1))
  ref_genotypes, ref_model = _import_reference()
  table = registry_genotypes(ref_genotypes)
  unknown = [n for n in args.names if n not in table]
  if unknown:
    raise SystemExit(f"unknown names {unknown}; known: {', '.join(table)}")
  OUT_DIR.mkdir(parents=True, exist_ok=True)
  names = args.names or list(table)
  jobs = [(n, kind, LAYERS) for n in names for kind in ("cifar", "imagenet")]
  jobs += [job for job in EXTRA if job[0] in names]
  for name, kind, layers in jobs:
    genotype, source = table[name]
    path = fixture_path(name, kind, layers)
    save_npz(path, make_fixture(genotype, kind, ref_model, layers))
    print(f"{path.relative_to(ROOT)}: {name} ({source}), {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
  main()
