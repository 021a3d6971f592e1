"""STM, ResNet-50, 8 frames, Jester.

  python main.py --config=configs/jester_stm_resnet50.py --workdir=runs/jester_stm_resnet50

Paper (views 1x1: 1 clip, centre crop; validation): 96.60 / 99.90 top-1 / top-5 (%).
Recipe as configs/ssv2_stm_resnet50.py (the paper's Something-Something schedule).
`--config=configs/jester_stm_resnet50.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('jester', 'stm_resnet50', 8, arg, recipe='stm')
