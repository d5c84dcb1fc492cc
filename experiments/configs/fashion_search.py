"""DARTS search (first order) on Fashion-MNIST, sized for a 2-core CPU.

  python experiments/search.py --config=experiments/configs/fashion_search.py --workdir=/tmp/fashion_search
  python experiments/search.py --config=experiments/configs/fashion_search.py:smoke --workdir=/tmp/smoke

Searches the DARTS CNN space with a 5-cell, C=8 supernet on 10,000 training images (5,000 for the weights,
5,000 for α), 28×28×1, batch 64. Writes the genotype (genotype.json / genotype.txt), pictures of its cells and
of α over the epochs into the workdir. α's Adam lr is 3e-3 (10× DARTS'), because this budget gives α 4 % of the
paper's α steps. Expected: about an hour on 2 CPU cores, a genotype, α's mean entropy printed beside it
(2.06547 against ln 8 = 2.07944 when measured; README, "Set-up").
`:smoke` is a real run of about a minute on a CPU with every artifact written.
Override any field on the command line, e.g. ``--config.method=gdas --config.seed=1``.
"""
import ml_collections

P = ml_collections.config_dict.placeholder

from darts_jax import bilevel


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "darts"          # any name of darts_jax.methods.METHODS
  c.method_kwargs = ml_collections.ConfigDict()
  c.space = "darts"           # "darts" or "nb201"
  c.dataset = "fashion_mnist"
  c.data_dir = ""
  c.subset = 10_000           # examples of the training split used (0: all 60,000)
  c.image_size = 0            # resize the images to this side before the search (0: as stored)
  c.train_portion = 0.5
  c.augment = True
  c.batch_size = 64
  c.epochs = 10
  c.steps_per_epoch = 0       # 0: one pass over the weight half
  c.warmup_epochs = ml_collections.config_dict.placeholder(int)  # None: the method's default
  c.eval_examples = 2_000     # val examples scored after each epoch (0: all)
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
  c.pt_tune_epochs = 1        # PT: fine-tuning epochs between decisions (released proj_intv: 5; 1 fits a CPU)
  c.pt_edges_per_decision = 1  # PT: edges decided per cell kind at each decision (released: 1)
  c.pt_tune_lr = ml_collections.config_dict.placeholder(float)  # PT tuning's weight lr (None: the search's / 10)
  c.pt_eval_examples = 2_000  # PT: validation examples each masked accuracy uses (0: the whole α half)
  c.ranking_cells = 0         # NB201: one-shot accuracy of this many sampled cells vs the table (Kendall τ; 0: off)
  c.ranking_top_k = 0         # NB201: the same for the k cells α ranks highest
  c.ranking_examples = 1_000  # validation examples per one-shot accuracy (0: the whole α half)
  c.seed = 0
  c.model = ml_collections.ConfigDict({"C": 8, "layers": 5, "N": 1})
  # Memory (supernet.SupernetConfig): remat "auto" ("op" in the edge chain, "none" in the fused step), "none",
  # "op" or "cell"; what a rematerialized unit saves ("nothing", "dots", "convs"); "float32" or "bfloat16"
  c.model.remat = "auto"
  c.model.remat_policy = "dots"
  c.model.compute_dtype = "float32"
  c.hparams = bilevel.hparams_config()   # SearchHParams overrides (unset: the method's released values)
  # α's Adam lr 10× DARTS' 3e-4: this run takes 780 α steps, 4 % of the paper's 19,550, and at 3e-4 α's
  # entropy stayed at ln 8 to four digits, leaving the genotype to initialization noise.
  c.hparams.a_lr = 3e-3
  # "auto" (edgewise on a CPU, fused elsewhere), "fused" (one program per step), "per_pass" (one network-gradient
  # program for every pass) or "edgewise" (one program per distinct edge, chained); see search.step_backend
  c.step_backend = "auto"
  c.num_devices = 0           # devices of the data-parallel mesh (0: all, over every process)
  c.bn_stats = "global"       # BatchNorm statistics of the global batch, or "device": per device's shard
  c.checkpoint_every = 0      # also checkpoint every this many steps (0: at epoch ends only)
  c.num_candidates = 100      # RS-WS: sampled architectures ranked on the supernet
  c.log_every = 10
  c.progress = True
  c.tensorboard = True
  if arg == "smoke":
    c.hparams.a_lr = None
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
    raise ValueError(f"unknown config argument {arg!r}; use '' or 'smoke'")
  return c
