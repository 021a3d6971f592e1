"""The base config: every key a run reads, with its default and what it means.

`get_config()` is CSTM on BN-Inception, 8 frames, Something-Something v2, trained with the GSM
recipe (docs/design.md, "Recipe"). The files in `configs/` start from it through `experiment`
and change only what differs; `--config.KEY=VALUE` changes one key, and a key not listed here
is refused. Importing this file loads ml_collections and nothing of JAX or the data stack.
"""
import os

import ml_collections

from cstm_foundation.errors import ConfigError
from cstm_jax.config import zoo
from input_pipeline import conventions

DATASETS = {  # name -> (TFDS name of the prepared dataset, classes; 0: the prepared count)
    'ssv2': ('something_something_v2', 174),
    'ssv1': ('something_something_v1', 174),
    'jester': ('jester', 27),
    'folder': ('video_folder', 0),  # your own videos (input_pipeline.prepare --dataset folder)
}


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.mode = 'train'             # 'train' (train, then evaluate) or 'eval' (a checkpoint)

  config.model = ml_collections.ConfigDict({
      'backbone': 'bninception',    # a key of models/zoo.py BACKBONES
      'temporal': 'cstm',           # tsn, tsm, gsm, 3d_shift_sum, gsm_attention, cstm; stm
                                    # (resnet50 only); 'none' (3D)
      'num_classes': 174,           # 0: the prepared dataset's count
      'num_frames': 8,              # frames per clip (data.num_frames follows it)
      'dropout': 0.5,               # before the classifier
      'dtype': 'float32',           # compute dtype: float32, bfloat16 or float16; params float32
      'width': 1.0,                 # channel multiplier (tests and the demo use small ones)
      'shift_div': 8,               # shifted channels: C // shift_div each way
      'shift_impl': 'roll',         # 'roll' (jnp.roll, wrapped frame zeroed) or 'slice'
      'gsm_interleave': True,       # the GSM reference's channel interleave
      'conv3d_grouping': 'grouped',  # CSTM's 3D branch: 'grouped', 'depthwise' or 'full'
      'conv3d_group_width': 16,     # channels per group of the grouped 3D branch
      'cstm_shift': 'tsm',          # shift path in cstm / 3d_shift_sum: 'tsm' or 'gsm'
      'attention_pool': 'clip',     # CSTM's attention squeeze: per 'clip' or per 'frame'
      'consensus': 'average',       # 'average' (TSN) or 'trn_multiscale' (TRN's relations)
      'trn_feature_dim': 256,       # trn_multiscale: frame features' width before the relations
      'partial_bn': False,          # TSN's partial BatchNorm (Inception nets): every BN after the
                                    # first uses its running statistics and is not trained
  })

  config.data = ml_collections.ConfigDict({
      'name': 'something_something_v2',  # TFDS name of the prepared dataset
      'data_dir': os.path.expanduser('~/tensorflow_datasets'),  # prepare's --data_dir
      'train_split': 'train',
      'eval_split': 'validation',
      'num_frames': config.model.get_ref('num_frames'),  # TSN segments, one frame each
      'crop': 224,                  # training crop; the backbone's native one (zoo.BACKBONES)
      'test_scale': 256,            # short side before the centre (or three) crops at test time
      'scales': conventions.TSN_SCALES,  # multi-scale crop: fractions of the short side
      'flip': True,                 # horizontal flip (off for Jester)
      'flip_label_swap': True,      # a flip swaps left/right classes (GSM); TRN's release does not
      'batch_size': 32,             # clips of a train step, over all processes
      'device_batch_max': 0,        # > 0: the most clips a device holds; a larger batch is
                                    # split into accumulated ones (config/finish.py)
      'eval_batch_size': 32,
      'num_workers': -1,            # grain processes; 0: in-process; -1: by the host (workers.py)
      'prefetch': 2,                # batches buffered per worker
      'seed': 0,                    # sampling, crops and flips; shuffling
  })

  config.optim = ml_collections.ConfigDict({
      'optimizer': 'sgd',           # 'sgd' (the recipe) or 'adamw' (momentum is its beta1)
      'base_lr': 0.01,              # per base_batch clips; scaled with the clips of an
                                    # optimizer step (batch_size x grad_accum_steps)
      'base_batch': 32,
      'momentum': 0.9,
      'weight_decay': 5e-4,         # SGD: coupled, added to the gradient as PyTorch's SGD does
      'epochs': 60.0,
      'warmup_epochs': 10.0,
      'warmup_start': 0.1,          # warmup from 0.1 x the peak learning rate
      'schedule': 'cosine',         # 'cosine', or 'steps' (x0.1 at decay_epochs)
      'lr_every': 'epoch',          # 'epoch': the lr holds for an epoch, as every original's
                                    # scheduler steps; 'step': it moves every optimizer step
      'cosine_min_ratio': 1e-7,     # the cosine's floor, x the peak (GSM's WarmupCosineLR
                                    # min_ratio)
      'decay_epochs': (20, 40),
      'clip_norm': 20.0,            # global-norm gradient clipping (0 disables)
      'param_groups': 'uniform',    # 'uniform'; 'tsn' (bias x2 no decay, BN no decay); 'tsm'
                                    # (tsn's and the new head's multipliers below)
      'head_lr_mult': 5.0,          # param_groups='tsm': the head's weights
      'head_bias_lr_mult': 10.0,    # param_groups='tsm': the head's bias
      'grad_accum_steps': 1,        # train steps (batches) per optimizer step
  })

  config.train = ml_collections.ConfigDict({
      'seed': 0,                    # initialisation and dropout
      'max_steps': -1,              # > 0 stops early (smoke runs)
      'log_every_steps': 50,
      'checkpoint_every_steps': 1000,
      'keep_checkpoints': 2,        # latest checkpoints kept (the best one is kept apart)
      'eval_every_epochs': 5.0,
      'init_from': 'imagenet',      # fresh runs: 'imagenet' or 'kinetics' (the file the
                                    # original trains from, train/pretrained.py), 'scratch',
                                    # or a converted checkpoint
      'init_partial': False,        # True: init_from may leave backbone weights that do not fit
      'bn_group': 'batch',          # the clips a training BatchNorm statistic covers: 'batch'
                                    # (all, SyncBN), 'device' (each device's share, as
                                    # nn.DataParallel), or a number N (N clips, any devices)
  })

  config.eval = ml_collections.ConfigDict({
      'views': '1x1',               # during training: 1 clip x centre crop
      'final_views': '1x1,2x3',     # after training, and in mode=eval: CLIPSxCROPS, clips 1
                                    # or 2, crops 1, 3, 5, 10 (mirrors); suffix 'full': crops
                                    # of the test scale (TSM's full resolution)
      'checkpoint': 'best',         # mode=eval: 'best' or 'latest'
      'tsne_examples': 2000,        # clips in the t-SNE plot of features
  })

  config.mesh = ml_collections.ConfigDict({
      'model': 1,                   # devices on the model axis (1: parameters replicated)
      'shard_threshold': 2 ** 20,   # with model > 1: parameters this large are sharded
  })

  config.xla = ml_collections.ConfigDict({
      # GPUs: force convolutions channels-last (XLA:GPU runs 3D convs NCDHW, wrapped in
      # transposes). Faster on an H100; off until the device check's layout part shows the
      # same gradients and updates on a GPU (docs/accelerators.md). No effect on CPU or TPU.
      'gpu_conv_nhwc': False,
      # JAX's persistent compilation cache: a folder (local or gs://), 'off', or '' for
      # $CSTM_COMPILE_CACHE, else $JAX_COMPILATION_CACHE_DIR, else ~/.cache/cstm_jax/xla
      # (cstm_jax/distributed/compile_cache.py). A restarted run loads its compiled steps from it.
      'cache_dir': '',
  })
  return config


# Keys that changed after runs were written with them: `upgraded` turns such a run's config
# (its config.json, a checkpoint's copy) into today's keys. Added keys take the value that built
# those runs; renamed keys move; removed keys go, with the reason a command line that sets one
# is told.
ADDED_KEYS = {'model.consensus': 'average', 'model.trn_feature_dim': 256,
              'model.partial_bn': False, 'data.flip_label_swap': True,
              # Runs before these keys moved the lr every step, to a floor of zero.
              'optim.lr_every': 'step', 'optim.cosine_min_ratio': 0.0,
              'data.device_batch_max': 0, 'train.bn_group': 'batch'}
RENAMED_KEYS = {'model.conv3d': 'model.conv3d_grouping'}
REMOVED_KEYS = {'data.colour': "the backbone sets its input normalisation (config/zoo.py's "
                               'input_norm)',
                'data.eval_clips': 'eval.views and eval.final_views decide the views',
                'data.eval_crops': 'eval.views and eval.final_views decide the views'}


def upgraded(values: dict) -> dict:
  """A config's nested dict with the keys of ADDED_KEYS, RENAMED_KEYS and REMOVED_KEYS brought
  up to date (blocks it lacks are left out)."""
  values = {block: dict(v) if isinstance(v, dict) else v for block, v in values.items()}
  for old, new in RENAMED_KEYS.items():
    (block, key), (_, new_key) = old.split('.'), new.split('.')
    if key in values.get(block, {}):
      values[block].setdefault(new_key, values[block].pop(key))
  for old in REMOVED_KEYS:
    block, key = old.split('.')
    values.get(block, {}).pop(key, None)
  for added, value in ADDED_KEYS.items():
    block, key = added.split('.')
    if block in values:
      values[block].setdefault(key, value)
  return values


def model_config(name: str = 'cstm_bninception', **overrides) -> ml_collections.ConfigDict:
  """The `config.model` block of a named model (zoo.MODELS), with `overrides` applied."""
  zoo.check_model_names([name])
  values = get_config().model.to_dict()
  unknown = sorted(set(overrides) - set(values))
  if unknown:
    raise ConfigError(f'unknown model config keys {unknown}; known keys: {sorted(values)}')
  return ml_collections.ConfigDict({**values, **zoo.MODELS[name], **overrides})


# Each system's recipe, as changes to the base config (GSM's): the original code each follows,
# and the keys it sets. `data` changes apply after the dataset's own settings.
RECIPES = {
    # swathikirans/GSM main.py and opts.py: the base config (CSTM and its ablations), and its
    # command's `--batch-size 16 --iter_size 2`: BatchNorm sees 16 clips, the optimizer steps
    # on the gradients of 32 (accumulated and clipped as its train() does: optim.accumulate).
    'gsm': {'data': {'batch_size': 16}, 'optim': {'grad_accum_steps': 2}},
    # mit-han-lab/temporal-shift-module main.py (its Something-Something command: --lr 0.01
    # --lr_steps 20 40 --epochs 50 --batch-size 64 --gd 20 --dropout 0.5 --npb) and
    # ops/models.py: no flip for Something-Something and Jester (get_augmentation), TSN's
    # parameter groups with the new head at lr x5 / x10 (get_optim_policies, fc_lr5).
    'tsm': {'optim': {'base_lr': 0.01, 'base_batch': 64, 'epochs': 50.0, 'warmup_epochs': 0.0,
                      'schedule': 'steps', 'decay_epochs': (20, 40), 'clip_norm': 20.0,
                      'param_groups': 'tsm'},
            'data': {'flip': False, 'batch_size': 64},
            # nn.DataParallel: each GPU normalises its share. TSM's README states no GPU count;
            # 8 GPUs (8 clips each) is this project's choice (docs/design.md, "Recipe").
            'train': {'bn_group': '8'},
            # Its README's SSv2 numbers, "full resolution x 2 clips", both ways its words and
            # its command read: 3 crops of 256 (2x3full) and of 224 (2x3, the command's
            # test_models.py --test_crops=3 --twice_sample without --full_res).
            'eval': {'final_views': '1x1,2x3,2x3full'}},
    # zhoubolei/TRN-pytorch main.py defaults with its README's --consensus_type TRNmultiscale
    # --batch-size 64; models.py:
    # partial BatchNorm (partialBN, on unless --no_partialbn), TSN's parameter groups
    # (get_optim_policies), and a flip that keeps the label (GroupRandomHorizontalFlip in
    # get_augmentation, every dataset).
    'trn': {'model': {'dropout': 0.8, 'partial_bn': True},
            'optim': {'base_lr': 0.001, 'base_batch': 64, 'epochs': 120.0, 'warmup_epochs': 0.0,
                      'schedule': 'steps', 'decay_epochs': (50, 100), 'clip_norm': 20.0,
                      'param_groups': 'tsn'},
            'data': {'flip': True, 'flip_label_swap': False, 'batch_size': 64},
            # Its README trains on CUDA_VISIBLE_DEVICES=0,1: nn.DataParallel over 2 GPUs, each
            # normalising 32 clips.
            'train': {'bn_group': '32'},
            # Its test_models.py defaults to 10 crops (5 and their mirrors) of 1 clip.
            'eval': {'final_views': '1x1,1x10'}},
    # The STM paper's Something-Something schedule (no code was released with it).
    'stm': {'optim': {'base_lr': 0.01, 'epochs': 50.0, 'warmup_epochs': 0.0,
                      'schedule': 'steps', 'decay_epochs': (30, 40, 45)}},
}


def experiment(dataset: str, model: str, frames: int, arg: str = '', *, recipe: str = 'gsm',
               **model_overrides) -> ml_collections.ConfigDict:
  """The base config for `model` on `dataset` with `frames` frames a clip: the dataset's name,
  classes and flip; the backbone's crop and test scale; `recipe`'s training settings
  (RECIPES). It computes in bfloat16, as accelerators train (parameters, statistics, attention
  and loss stay float32; measured against float32 in docs/benchmarks.md). `arg` 'smoke'
  shrinks it to a float32 CPU run."""
  tfds_name, classes = DATASETS[dataset]
  config = get_config()
  config.model.update(model_config(model, **{'num_frames': frames, 'num_classes': classes,
                                             'dtype': 'bfloat16', **model_overrides}).to_dict())
  backbone = zoo.BACKBONES[config.model.backbone]
  config.data.update(name=tfds_name, crop=backbone.crop, test_scale=backbone.test_scale,
                     flip=dataset != 'jester')
  for block, values in RECIPES[recipe].items():
    config[block].update(values)
  config.train.init_from = start_of(config.model)
  return shrink(config, arg)


def start_of(model) -> str:
  """The weights the paper's table starts `model` (a `config.model` block) from: TSM's
  Kinetics release for TSN and TSM on ResNet-50 (their rows quote TSM's Kinetics-pretrained
  numbers), nothing for R(2+1)D (trained from scratch in its paper), ImageNet for the rest
  (the 3D Inception nets and I3D-ResNet-50 inflate it)."""
  if model.backbone.startswith('r2plus1d'):
    return 'scratch'
  if model.backbone == 'resnet50' and model.temporal in ('tsn', 'tsm'):
    return 'kinetics'
  return 'imagenet'


def shrink(config: ml_collections.ConfigDict, arg: str) -> ml_collections.ConfigDict:
  """'' keeps the experiment; 'smoke' makes it a tiny CPU run of the same code paths."""
  if arg == '':
    return config
  if arg != 'smoke':
    raise ConfigError(f'unknown config argument {arg!r}; expected nothing or "smoke"')
  config.model.update(width=0.125, num_frames=4, dropout=0.0, dtype='float32',
                      num_classes=0)  # the prepared dataset's: smoke runs take any dataset
  is_v3 = config.model.backbone == 'inception_v3'
  config.data.update(crop=75 if is_v3 else 32, test_scale=80 if is_v3 else 36, batch_size=8,
                     eval_batch_size=8, num_workers=0)
  # max_steps ends the run; the schedule still warms up and decays.
  config.optim.update(epochs=100.0, warmup_epochs=1.0, grad_accum_steps=1)
  config.train.update(max_steps=6, log_every_steps=2, checkpoint_every_steps=2,
                      eval_every_epochs=1.0, init_from='scratch',  # no download in a smoke run
                      bn_group='batch')  # its batch of 8 holds no recipe's group
  config.eval.update(final_views='1x1', tsne_examples=64)
  return config
