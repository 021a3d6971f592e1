"""TRN multiscale, BN-Inception, 8 frames, Something-Something v1 (the TRN release's recipe).

  python main.py --config=configs/ssv1_trn.py --workdir=runs/ssv1_trn

Paper (1 clip, centre crop, validation): 34.44 top-1 (%).
Recipe as configs/ssv2_trn.py.
`--config=configs/ssv1_trn.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv1', 'trn_bninception', 8, arg, recipe='trn')
