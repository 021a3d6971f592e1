"""TRN multiscale, BN-Inception, 8 frames, Something-Something v2 (the TRN release's recipe).

  python main.py --config=configs/ssv2_trn.py --workdir=runs/ssv2_trn

Paper (views 1x1: 1 clip, centre crop; validation): 48.80 / 77.64 top-1 / top-5 (%).
The final evaluation also runs TRN's own test protocol, views 1x10 (TRN's test_models.py).
Recipe of `zhoubolei/TRN-pytorch` (`RECIPES['trn']`: `main.py` defaults with
`--consensus_type TRNmultiscale`, `models.py`): SGD, lr 0.001 at batch 64, momentum 0.9,
weight decay 5e-4, x0.1 at epochs 50 and 100 of 120, gradient norm clipped at 20, dropout 0.8
before the frame features, partial BatchNorm, TSN's parameter groups, a horizontal flip that
keeps the label (as the release flips), ImageNet BN-Inception weights (TSN's).
Starts from ImageNet (`train.init_from=imagenet`): bn_inception-9f5701afb96c8044.pth, TSN's
BN-Inception, as TRN trains from.
`--config=configs/ssv2_trn.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv2', 'trn_bninception', 8, arg, recipe='trn')
