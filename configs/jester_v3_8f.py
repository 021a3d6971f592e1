"""CSTM, Inception v3, 8 frames, Jester.

  python main.py --config=configs/jester_v3_8f.py --workdir=runs/jester_v3_8f

Paper (views 1x1: 1 clip, centre crop; validation): 96.51 / 99.86 top-1 / top-5 (%).
On GSM's recipe, the base config (docs/design.md, "Recipe"; inferred for CSTM, whose paper
gives none): swathikirans/GSM main.py and its README's command.
Starts from ImageNet (`train.init_from=imagenet`): inceptionv3-cuhk-0e09b300b493bc74c.pth, the
network GSM trains from.
`--config=configs/jester_v3_8f.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('jester', 'cstm_inception_v3', 8, arg)
