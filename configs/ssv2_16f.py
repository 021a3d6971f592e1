"""CSTM, BN-Inception, 16 frames, Something-Something v2.

  python main.py --config=configs/ssv2_16f.py --workdir=runs/ssv2_16f

Paper (views 1x1: 1 clip, centre crop; validation): 63.54 / 88.99 top-1 / top-5 (%).
On GSM's recipe, the base config (docs/design.md, "Recipe"; inferred for CSTM, whose paper
gives none): swathikirans/GSM main.py and its README's command.
Starts from ImageNet (`train.init_from=imagenet`): bn_inception-9f5701afb96c8044.pth, the network
TSN and GSM train from.
`--config=configs/ssv2_16f.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv2', 'cstm_bninception', 16, arg)
