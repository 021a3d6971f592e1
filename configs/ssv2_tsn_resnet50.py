"""TSN, ResNet-50, 8 frames, Something-Something v2 (Table 3 of the paper).

  python main.py --config=configs/ssv2_tsn_resnet50.py --workdir=runs/ssv2_tsn_resnet50

Paper (Table 3; views 1x1: 1 clip, centre crop; validation): 27.80 / 57.60 top-1 / top-5 (%).
TSN's numbers in the table are TSM's TSN baseline (the TSM paper's tables), trained by TSM's code
without its shift (`RECIPES['tsm']`: mit-han-lab/temporal-shift-module main.py, ops/models.py with
is_shift off).
Starts from Kinetics (`train.init_from=kinetics`): TSM's release
TSM_kinetics_RGB_resnet50_avg_segment5_e50.pth, loaded whole but for its 400-class head as TSM's
`--tune_from` loads it, since the table's number was trained so; `--config.train.init_from=imagenet`
starts from torchvision's ImageNet ResNet-50 instead.
`--config=configs/ssv2_tsn_resnet50.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv2', 'tsn_resnet50', 8, arg, recipe='tsm')
