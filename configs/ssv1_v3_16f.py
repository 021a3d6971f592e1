"""CSTM, Inception v3, 16 frames, Something-Something v1.

  python main.py --config=configs/ssv1_v3_16f.py --workdir=runs/ssv1_v3_16f

Paper (views 1x1: 1 clip, centre crop; validation): 51.27 / 79.90 top-1 / top-5 (%).
On GSM's recipe, the base config (docs/design.md, "Recipe"; inferred for CSTM, whose paper
gives none): swathikirans/GSM main.py and its README's command.
Starts from ImageNet (`train.init_from=imagenet`): inceptionv3-cuhk-0e09b300b493bc74c.pth, the
network GSM trains from.
`--config=configs/ssv1_v3_16f.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv1', 'cstm_inception_v3', 16, arg)
