"""CSTM, BN-Inception, 8 frames, Jester.

  python main.py --config=configs/jester_8f.py --workdir=runs/jester_8f

Paper (views 1x1: 1 clip, centre crop; validation): 96.40 / 99.84 top-1 / top-5 (%).
On GSM's recipe, the base config (docs/design.md, "Recipe"; inferred for CSTM, whose paper
gives none): swathikirans/GSM main.py and its README's command.
Starts from ImageNet (`train.init_from=imagenet`): bn_inception-9f5701afb96c8044.pth, the network
TSN and GSM train from.
`--config=configs/jester_8f.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('jester', 'cstm_bninception', 8, arg)
