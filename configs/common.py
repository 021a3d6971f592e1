"""Blocks shared by the experiment configs: one function builds any experiment.

Every experiment config file calls `experiment(...)` with its dataset, model and frames, and
passes on its string argument (`:smoke` shrinks any experiment to a tiny CPU run).
"""
import multiprocessing
import os

import ml_collections

from cstm_jax import optim
from cstm_jax.models.build import BACKBONES, model_config
from input_pipeline.pipeline import data_config

DATASETS = {  # name -> (TFDS name, classes)
    'ssv2': ('something_something_v2', 174),
    'ssv1': ('something_something_v1', 174),
    'jester': ('jester', 27),
}
DEFAULT_DATA_DIR = os.path.expanduser('~/tensorflow_datasets')


def experiment(dataset: str, model: str, frames: int, arg: str = '',
               **model_overrides) -> ml_collections.ConfigDict:
  """The GSM recipe (SPEC section 7) for `model` on `dataset` with `frames` frames a clip."""
  tfds_name, classes = DATASETS[dataset]
  config = ml_collections.ConfigDict()
  config.mode = 'train'  # 'train' (train, then evaluate) or 'eval' (evaluate a checkpoint)

  config.model = model_config(model, **{'num_frames': frames, 'num_classes': classes,
                                        **model_overrides})
  info = BACKBONES[config.model.backbone]
  config.data = data_config(
      name=tfds_name, data_dir=DEFAULT_DATA_DIR, crop=info.crop, test_scale=info.test_scale,
      colour=info.colour, flip=dataset != 'jester', batch_size=32, eval_batch_size=32,
      num_workers=min(16, multiprocessing.cpu_count()))
  config.data.num_frames = config.model.get_ref('num_frames')

  config.optim = optim.default_config()
  config.train = ml_collections.ConfigDict({
      'seed': 0,
      'max_steps': -1,            # > 0 stops early (smoke runs)
      'log_every_steps': 50,
      'checkpoint_every_steps': 1000,
      'keep_checkpoints': 2,
      'eval_every_epochs': 5.0,
      'init_from': '',            # a variables checkpoint (cstm_jax.convert) when starting fresh
      'init_partial': False,      # True: init_from may leave backbone weights that do not fit
  })
  config.eval = ml_collections.ConfigDict({
      'views': '1x1',             # during training: 1 clip x centre crop
      'final_views': '1x1,2x3',   # after training, and in mode=eval
      'checkpoint': 'best',       # mode=eval: 'best' or 'latest'
      'tsne_examples': 2000,
  })
  config.mesh = ml_collections.ConfigDict({
      'model': 1,                 # devices on the model axis (1: parameters replicated)
      'shard_threshold': 2 ** 20,  # with model > 1: parameters this large are sharded
  })
  config.xla = ml_collections.ConfigDict({
      # GPUs: force convolutions channels-last (XLA:GPU runs 3D convs NCDHW, wrapped in
      # transposes). Faster on an H100, but not yet shown to give the same parameter update
      # (docs/accelerators.md), so off. No effect on CPU or TPU.
      'gpu_conv_nhwc': False,
  })
  return shrink(config, arg)


def shrink(config: ml_collections.ConfigDict, arg: str) -> ml_collections.ConfigDict:
  """'' keeps the experiment; 'smoke' makes it a tiny CPU run of the same code paths."""
  if arg == '':
    return config
  if arg != 'smoke':
    raise ValueError(f'unknown config argument {arg!r}; expected nothing or "smoke"')
  config.model.width = 0.125
  config.model.num_frames = 4
  config.model.dropout = 0.0
  config.model.num_classes = 0  # the prepared dataset's (smoke runs take any dataset)
  is_v3 = config.model.backbone == 'inception_v3'
  config.data.crop = 75 if is_v3 else 32
  config.data.test_scale = 80 if is_v3 else 36
  config.data.batch_size = 8
  config.data.eval_batch_size = 8
  config.data.num_workers = 0
  config.optim.epochs = 100.0  # max_steps ends the run; the schedule still warms up and decays
  config.optim.warmup_epochs = 1.0
  config.train.max_steps = 6
  config.train.log_every_steps = 2
  config.train.checkpoint_every_steps = 2
  config.train.eval_every_epochs = 1.0
  config.eval.final_views = '1x1'
  config.eval.tsne_examples = 64
  return config
