"""STM, ResNet-50, 8 frames, Something-Something v2 (the STM paper's recipe).

  python main.py --config=configs/ssv2_stm_resnet50.py --workdir=runs/ssv2_stm_resnet50

The comparison table gives STM's Jester result (configs/jester_stm_resnet50.py); this is the
same model on SSv2. Recipe of the STM paper for Something-Something: SGD from ImageNet
ResNet-50 (`cstm_jax.inference.convert` of torchvision's weights; the STM parts start as a shift and
from their initialisation), lr 0.01, x0.1 at epochs 30, 40 and 45 of 50, dropout 0.5.
Starts from ImageNet (`train.init_from=imagenet`): resnet50-19c8e357.pth, torchvision's
ResNet-50, as the STM paper trains from.
`--config=configs/ssv2_stm_resnet50.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv2', 'stm_resnet50', 8, arg, recipe='stm')
