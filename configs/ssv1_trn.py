"""TRN multiscale, BN-Inception, 8 frames, Something-Something v1 (the TRN release's recipe).

  python main.py --config=configs/ssv1_trn.py --workdir=runs/ssv1_trn

Paper (views 1x1: 1 clip, centre crop; validation): 34.44 top-1 (%).
The final evaluation also runs TRN's own test protocol, views 1x10 (TRN's test_models.py).
Recipe as configs/ssv2_trn.py.
Starts from ImageNet (`train.init_from=imagenet`): bn_inception-9f5701afb96c8044.pth, TSN's
BN-Inception, as TRN trains from.
`--config=configs/ssv1_trn.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv1', 'trn_bninception', 8, arg, recipe='trn')
