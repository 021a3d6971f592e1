"""TSM, ResNet-50, 8 frames, Something-Something v1 (Table 3 of the paper).

  python main.py --config=configs/ssv1_tsm_resnet50.py --workdir=runs/ssv1_tsm_resnet50

Paper (Table 3; views 1x1: 1 clip, centre crop; validation): 43.40 / 73.20 top-1 / top-5 (%).
On TSM's recipe (`RECIPES['tsm']`: mit-han-lab/temporal-shift-module main.py and its README's
Something-Something command: --lr 0.01 --lr_steps 20 40 --epochs 50 --batch-size 64 --dropout 0.5
--npb, no flip).
Starts from Kinetics (`train.init_from=kinetics`): TSM's release
TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth, loaded whole but for its 400-class
head as TSM's `--tune_from` loads it, since the table's number was trained so;
`--config.train.init_from=imagenet` starts from torchvision's ImageNet ResNet-50 instead.
`--config=configs/ssv1_tsm_resnet50.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv1', 'tsm_resnet50', 8, arg, recipe='tsm')
