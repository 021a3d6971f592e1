"""CSTM, BN-Inception, 16 frames, Something-Something v2.

  python main.py --config=configs/ssv2_16f.py --workdir=runs/ssv2_16f

Paper (1 clip, centre crop): 63.54 top-1 / 88.99 top-5 on the SSv2 validation set.
`--config=configs/ssv2_16f.py:smoke` shrinks it to a tiny CPU run.
"""
import ml_collections

from configs import common


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = common.model('cstm_bninception', num_frames=16, num_classes=174)
  if arg == 'smoke':
    common.shrink_for_smoke(config)
  elif arg:
    raise ValueError(f'unknown config argument {arg!r}; expected "" or "smoke"')
  return config
