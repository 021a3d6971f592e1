"""CSTM, Inception v3, 16 frames, Jester.

  python main.py --config=configs/jester_v3_16f.py --workdir=runs/jester_v3_16f

Paper (views 1x1: 1 clip, centre crop; validation): 96.61 / 99.86 top-1 / top-5 (%).
On GSM's recipe, the base config (docs/design.md, "Recipe"; inferred for CSTM, whose paper
gives none): swathikirans/GSM main.py and its README's command.
Starts from ImageNet (`train.init_from=imagenet`): inceptionv3-cuhk-0e09b300b493bc74c.pth, the
network GSM trains from.
`--config=configs/jester_v3_16f.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('jester', 'cstm_inception_v3', 16, arg)
