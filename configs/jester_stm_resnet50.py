"""STM, ResNet-50, 8 frames, Jester.

  python main.py --config=configs/jester_stm_resnet50.py --workdir=runs/jester_stm_resnet50

Paper (views 1x1: 1 clip, centre crop; validation): 96.60 / 99.90 top-1 / top-5 (%).
Recipe as configs/ssv2_stm_resnet50.py (the paper's Something-Something schedule).
Starts from ImageNet (`train.init_from=imagenet`): resnet50-19c8e357.pth, torchvision's
ResNet-50, as the STM paper trains from.
`--config=configs/jester_stm_resnet50.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('jester', 'stm_resnet50', 8, arg, recipe='stm')
