"""CSTM, Inception v3, 8 frames, Something-Something v1.

  python main.py --config=configs/ssv1_v3_8f.py --workdir=runs/ssv1_v3_8f

Paper (views 1x1: 1 clip, centre crop; validation): 49.24 / 77.56 top-1 / top-5 (%).
On GSM's recipe, the base config (docs/design.md, "Recipe"; inferred for CSTM, whose paper
gives none): swathikirans/GSM main.py and its README's command.
Starts from ImageNet (`train.init_from=imagenet`): inceptionv3-cuhk-0e09b300b493bc74c.pth, the
network GSM trains from.
`--config=configs/ssv1_v3_8f.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv1', 'cstm_inception_v3', 8, arg)
