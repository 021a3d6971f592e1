"""TSM, ResNet-50, 8 frames, Something-Something v2, on TSM's recipe (`RECIPES['tsm']`:
mit-han-lab/temporal-shift-module main.py and ops/models.py): lr 0.01 per 64 clips, x0.1 at
epochs 20 and 40 of 50, TSN's parameter groups with the head at x5 / x10, no flip, Kinetics
ResNet-50 weights (TSM's release).

  python main.py --config=configs/ssv2_tsm_resnet50.py --workdir=runs/ssv2_tsm_resnet50

Paper (the CSTM paper's citation; 1 clip, centre crop, validation): 58.20 / 84.80 top-1 / top-5
(%); evaluated so by the run's final `1x1` views. The final evaluation also runs TSM's own
protocol for its README's SSv2 numbers, "full resolution x 2 clips", read both ways: 3 crops of
256 (views `2x3full`) and the 3 crops of 224 its command takes (views `2x3`).
Starts from Kinetics (`train.init_from=kinetics`): TSM's release
TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth, loaded whole but for its 400-class
head as TSM's `--tune_from` loads it, since the table's number was trained so;
`--config.train.init_from=imagenet` starts from torchvision's ImageNet ResNet-50 instead.
`--config=configs/ssv2_tsm_resnet50.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv2', 'tsm_resnet50', 8, arg, recipe='tsm')
