"""What a finished run leaves in its workdir for people: the architecture as text (the DARTS ``Genotype(...)``
form or the NB201 string) and JSON, its pictures, α and its history. Each file is written atomically."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from darts_jax import visualize
from darts_jax import workdir as wd


def write_architecture(workdir: str, arch, space) -> str:
  """Writes ``genotype.txt`` and ``genotype.json`` (`SearchSpace.arch_text` / `arch_json`); returns the text."""
  text = space.arch_text(arch)
  wd.atomic_write(os.path.join(workdir, "genotype.txt"), text + "\n")
  wd.write_json(os.path.join(workdir, "genotype.json"), space.arch_json(arch))
  return text


def write_search(workdir: str, arch, space, alphas: Mapping[str, Any], epoch_records: Sequence[Dict[str, Any]],
                 early_stop: Optional[Tuple[int, int]] = None,
                 rollbacks: Sequence[Mapping[str, Any]] = ()) -> List[str]:
  """A search's exports: the architecture (`write_architecture`) and its pictures, ``alphas.json`` and, from
  the per-epoch metrics records, the op weights' history (``alphas.png``) and, where the records hold the α
  Hessian's eigenvalue, its history (``hessian.png``, marking `early_stop`: DARTS-ES' (stop epoch, kept
  epoch), and the eigenvalues of the epochs each DARTS-ADA roll-back in `rollbacks` (its ``ada`` records)
  discarded). Returns the pictures' paths."""
  write_architecture(workdir, arch, space)
  wd.write_json(os.path.join(workdir, "alphas.json"), {k: np.asarray(v).tolist() for k, v in alphas.items()})
  paths = list(space.plot_arch(arch, workdir))
  if epoch_records:
    history = {k: [r["op_weights"][k] for r in epoch_records] for k in epoch_records[-1]["op_weights"]}
    paths += visualize.plot_alpha_history(history, space.primitives, os.path.join(workdir, "alphas"))
  measured = [(r["epoch"], r["hessian_eigenvalue"]) for r in epoch_records if r.get("hessian_eigenvalue") is not None]
  if measured:
    stop, kept = early_stop or (None, None)
    abandoned = [([(e, v) for e, v in b["abandoned_eigenvalues"] if v is not None],
                  f"discarded by roll-back {b['iteration']} to epoch {b['rollback_epoch']} "
                  f"(then weight decay {b['weight_decay']:.2g})") for b in rollbacks]
    paths += visualize.plot_eigenvalues(*zip(*measured), os.path.join(workdir, "hessian"), stop, kept, abandoned)
  return paths
