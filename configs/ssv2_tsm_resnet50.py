"""TSM, ResNet-50, 8 frames, Something-Something v2 (the TSM recipe).

  python main.py --config=configs/ssv2_tsm_resnet50.py --workdir=runs/ssv2_tsm_resnet50

Paper (1 clip, centre crop, validation): 58.20 / 84.80 top-1 / top-5 (%).
`--config=configs/ssv2_tsm_resnet50.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return _tsm_recipe(defaults.experiment('ssv2', 'tsm_resnet50', 8, arg))


def _tsm_recipe(config):
  config.optim.param_groups = 'tsm'
  config.optim.schedule = 'steps'
  config.optim.epochs = 50.0
  config.optim.warmup_epochs = 0.0
  config.optim.decay_epochs = (20, 40)
  return config
