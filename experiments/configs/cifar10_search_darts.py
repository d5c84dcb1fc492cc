"""The DARTS paper's CIFAR-10 search: an 8-cell, C=16 supernet, 50 epochs, half the training set for α.

  python experiments/search.py --config=experiments/configs/cifar10_search_darts.py --workdir=/tmp/c10_search
  python experiments/search.py --config=experiments/configs/cifar10_search_darts.py:second --workdir=/tmp/c10_2nd
  python experiments/search.py --config=experiments/configs/cifar10_search_darts.py:smoke --workdir=/tmp/smoke

Liu et al. (ICLR 2019), Section 3.1 / the released ``cnn/train_search.py``: the 50,000 CIFAR-10 training images
split 25,000 (weights) / 25,000 (α), batch 64, crop + flip, SGD momentum 0.9 with lr 0.025 cosine-annealed to
0.001, weight decay 3e-4, gradient clipping 5; Adam on α (lr 3e-4, β=(0.5, 0.999), weight decay 1e-3).
Arguments: '' first-order DARTS (paper, Table 1: 3.00 ± 0.14 % test error after retraining, search cost 1.5
GPU-days), ``second`` the paper's second-order finite-difference hypergradient (2.76 ± 0.09 % after
retraining with cifar10_retrain_darts.py, 4 GPU-days; the search costs count four repeated searches),
``exact`` the exact second-order hypergradient (Hessian-vector product; on a CPU it runs edge by edge, as the
first order does; speed and memory in `benchmarks/README.md`),
``smoke`` a tiny real run of about a minute on a CPU. Needs the TFDS ``cifar10`` data
prepared (``--config.data_dir`` names the TFDS directory).
"""
import ml_collections

P = ml_collections.config_dict.placeholder

from darts_jax import bilevel


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "darts"          # any name of darts_jax.methods.METHODS
  c.method_kwargs = ml_collections.ConfigDict()
  c.space = "darts"
  c.dataset = "cifar10"
  c.data_dir = ""
  c.subset = 0                # 0: all 50,000 training images
  c.image_size = 0            # resize the images to this side before the search (0: as stored)
  c.train_portion = 0.5
  c.augment = True
  c.batch_size = 64
  c.epochs = 50
  c.steps_per_epoch = 0       # 0: one pass over the weight half
  c.warmup_epochs = ml_collections.config_dict.placeholder(int)  # None: the method's default
  c.eval_examples = 0         # val examples scored after each epoch (0: the whole α half)
  c.hessian_every = 0         # epochs between the α Hessian's largest eigenvalue (0: never; darts_jax.hessian)
  c.hessian_batches = 1       # validation batches it is measured on
  c.hessian_iters = 20        # power iterations at most
  # DARTS-ES (RobustDARTS, darts_jax.hessian.EarlyStop): "darts_es" stops the search when the eigenvalue's local
  # average rises by `factor` over `delta` averages and exports the architecture of that earlier epoch; needs
  # hessian_every > 0. Released: window 5, delta 4, factor 1.3, start_epoch 10, ev_freq 2 (0 here: hessian_every)
  # "darts_ada" (DARTS-ADA) instead returns to that epoch with the weights' weight decay × mul_factor, until
  # it reaches max_weight_decay.
  c.early_stop = ""           # "" (none), "darts_es" or "darts_ada"
  c.early_stop_kwargs = ml_collections.ConfigDict({"window": 5, "delta": 4, "factor": 1.3, "start_epoch": 10,
                                                   "ev_freq": 0,
                                                   # DARTS-ADA (None: released 3.0, 243e-4, 0)
                                                   "mul_factor": P(float), "max_weight_decay": P(float),
                                                   "extra_rollback_epochs": P(int)})
  # Architecture selection (darts_jax.projection): "argmax" (the method's derive), "pt" (DARTS-PT's perturbation
  # selection, α still trained while tuning between decisions) or "pt_fixed" (α held fixed: DARTS-PT's "blank")
  c.selection = "argmax"
  c.pt_tune_epochs = 5        # PT: fine-tuning epochs between decisions (released proj_intv)
  c.pt_edges_per_decision = 1  # PT: edges decided per cell kind at each decision (released: 1)
  c.pt_tune_lr = ml_collections.config_dict.placeholder(float)  # PT tuning's weight lr (None: the search's / 10)
  c.pt_eval_examples = 0      # PT: validation examples each masked accuracy uses (0: the whole α half)
  c.ranking_cells = 0         # NB201: one-shot accuracy of this many sampled cells vs the table (Kendall τ; 0: off)
  c.ranking_top_k = 0         # NB201: the same for the k cells α ranks highest
  c.ranking_examples = 1_000  # validation examples per one-shot accuracy (0: the whole α half)
  c.seed = 0
  c.model = ml_collections.ConfigDict({"C": 16, "layers": 8, "N": 1})
  # Memory (supernet.SupernetConfig): remat "auto" ("op" in the edge chain, "none" in the fused step), "none",
  # "op" or "cell"; what a rematerialized unit saves ("nothing", "dots", "convs"); "float32" or "bfloat16"
  c.model.remat = "auto"
  c.model.remat_policy = "dots"
  c.model.compute_dtype = "float32"
  c.hparams = bilevel.hparams_config(hypergradient="first_order")  # SearchHParams overrides
  # "auto" (edgewise on a CPU, fused elsewhere), "fused" (one program per step), "per_pass" (one network-gradient
  # program for every pass) or "edgewise" (one program per distinct edge, chained); see search.step_backend
  c.step_backend = "auto"
  c.num_devices = 0           # devices of the data-parallel mesh (0: all, over every process)
  c.bn_stats = "global"       # BatchNorm statistics of the global batch, or "device": per device's shard
  c.checkpoint_every = 0      # also checkpoint every this many steps (0: at epoch ends only)
  c.num_candidates = 100
  c.log_every = 50
  c.progress = True
  c.tensorboard = True
  if arg == "second":
    c.hparams.hypergradient = "second_order_fd"
  elif arg == "exact":
    c.hparams.hypergradient = "second_order_exact"
  elif arg == "smoke":
    c.subset = 256
    c.batch_size = 16
    c.epochs = 2
    c.steps_per_epoch = 3
    c.eval_examples = 32
    c.pt_eval_examples = 32
    c.model.C = 4
    c.model.layers = 3
    c.num_candidates = 4
    c.log_every = 1
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use '', 'second', 'exact' or 'smoke'")
  return c
