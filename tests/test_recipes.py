"""Each recipe's training step against the original code's, step for step: the same small
BN-Inception TSN in PyTorch, trained the way GSM's, TSM's and TRN's `main.py` train it (their
optimizer policies, partial BatchNorm, gradient clipping, the learning rate of the step), and
in this project through `program.build`. From identical weights on an identical batch, two
optimizer steps must leave every parameter and BatchNorm statistic equal to 1e-5."""
import flax
import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import torch_reference as ref
from cstm_jax.config import defaults, finish
from cstm_jax.distributed import sharding
from cstm_jax.models.torch_weights import convert_state_dict
from cstm_jax.train import program as program_lib
from input_pipeline import pipeline
from torch_reference import reference_normalise

WIDTH, FRAMES, CROP, BATCH, CLASSES = 0.125, 2, 64, 4, 5


def recipe_config(recipe: str):
  """The recipe's config for a TSN BN-Inception small enough to train here."""
  config = defaults.experiment('ssv2', 'tsn_bninception', FRAMES, recipe=recipe)
  config.model.update(width=WIDTH, num_classes=CLASSES, dropout=0.0, dtype='float32')
  config.data.update(crop=CROP, batch_size=BATCH, eval_batch_size=BATCH)
  return finish.without_data(config)


def torch_optimizer(model, config):
  """SGD over the parameter groups the original builds: GSM passes TSN's policies to SGD but
  never applies their multipliers (every group trains at the base lr with the base decay);
  TSM's and TRN's `adjust_learning_rate` apply them (`lr_mult`, `decay_mult`)."""
  if config.optim.param_groups == 'uniform':
    groups = [{'params': list(model.parameters()), 'lr_mult': 1, 'decay_mult': 1}]
  else:  # TSN's get_optim_policies (TRN's models.py; TSM's ops/models.py adds lr5 / lr10)
    head = config.optim.param_groups == 'tsm'
    weights, biases, bns = [], [], []
    for module in model.base_model.modules():
      if isinstance(module, torch.nn.Conv2d):
        weights.append(module.weight)
        biases += [module.bias] if module.bias is not None else []
      elif isinstance(module, torch.nn.BatchNorm2d) and module.weight.requires_grad:
        bns += [module.weight, module.bias]
    groups = [{'params': weights, 'lr_mult': 1, 'decay_mult': 1},
              {'params': biases, 'lr_mult': 2, 'decay_mult': 0},
              {'params': bns, 'lr_mult': 1, 'decay_mult': 0},
              {'params': [model.new_fc.weight], 'lr_mult': 5 if head else 1, 'decay_mult': 1},
              {'params': [model.new_fc.bias], 'lr_mult': 10 if head else 2, 'decay_mult': 0}]
  return torch.optim.SGD(groups, lr=0.0, momentum=config.optim.momentum,
                         weight_decay=config.optim.weight_decay)


def partial_bn(model) -> None:
  """TRN's (TSN's) `train()` with partialBN: every BatchNorm2d after the first in eval mode,
  its weight and bias not trained."""
  count = 0
  for module in model.base_model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      count += 1
      if count >= 2:
        module.eval()
        module.weight.requires_grad = False
        module.bias.requires_grad = False


def torch_steps(model, config, schedule, clips, labels, steps: int):
  """`steps` of the original's training, in float64: the reference then carries none of the
  rounding that float32 adds along the network's depth."""
  model.double().train()
  if config.model.partial_bn:
    partial_bn(model)
  optimizer = torch_optimizer(model, config)
  inputs = torch.from_numpy(reference_normalise(clips, 'bgr255')).permute(0, 1, 4, 2, 3).double()
  for step in range(steps):
    for group in optimizer.param_groups:
      group['lr'] = float(schedule(step)) * group['lr_mult']
      group['weight_decay'] = config.optim.weight_decay * group['decay_mult']
    optimizer.zero_grad()
    F.cross_entropy(model(inputs), torch.from_numpy(labels).long()).backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                   config.optim.clip_norm)
    optimizer.step()
  return model


def flat(variables) -> dict:
  return {f'{c}/{k}': np.asarray(v) for c in ('params', 'batch_stats')
          for k, v in flax.traverse_util.flatten_dict(variables[c], sep='/').items()}


@pytest.mark.parametrize('recipe', ['gsm', 'tsm', 'trn'])
def test_two_steps_of_the_recipe_equal_the_originals(recipe):
  config = recipe_config(recipe)
  program = program_lib.build(config, sharding.make_mesh(1, jax.devices()[:1]),
                              steps_per_epoch=10)
  model = ref.randomise(ref.TSN(ref.InceptionBase('bninception', WIDTH, FRAMES), CLASSES))
  state_dict = lambda m: {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}
  variables, _ = convert_state_dict(state_dict(model), config.model)
  start = {k: v.copy() for k, v in flat(variables).items()}  # before any step reuses buffers
  state = program.state_with(variables)
  rng = np.random.default_rng(0)
  clips = rng.integers(0, 256, (BATCH, FRAMES, CROP, CROP, 3), np.uint8)
  labels = rng.integers(0, CLASSES, BATCH).astype(np.int32)
  for _ in range(2):
    state, metrics = program.train_step(state, {'clips': clips, 'labels': labels},
                                        jax.random.key(0))
  torch_steps(model, config, program.schedule, clips, labels, steps=2)
  expected, _ = convert_state_dict(state_dict(model), config.model)
  ours = flat({'params': jax.device_get(state.params),
               'batch_stats': jax.device_get(state.batch_stats)})
  theirs = flat(expected)
  assert ours.keys() == theirs.keys()
  frozen = set()
  if config.model.partial_bn:  # every BatchNorm but the first kept its weights and statistics
    frozen = {k for k in theirs if '/bn/' in k and '/conv1_7x7_s2/' not in k}
    assert frozen and all(np.array_equal(ours[k], start[k]) for k in frozen)
  moved = 0
  for key, value in theirs.items():
    difference = np.linalg.norm(ours[key] - value) / max(np.linalg.norm(value), 1e-12)
    assert difference <= 1e-5, (key, difference)
    moved += key not in frozen and not np.array_equal(value, start[key])
  assert moved > (len(theirs) - len(frozen)) // 2  # the steps changed most of what trains


@pytest.mark.parametrize('recipe, dataset, flips, swaps', [
    ('gsm', 'ssv2', True, True), ('gsm', 'jester', False, False),
    ('tsm', 'ssv2', False, False), ('tsm', 'jester', False, False),
    ('trn', 'ssv2', True, False), ('trn', 'jester', True, False)])
def test_each_recipe_flips_as_its_original(recipe, dataset, flips, swaps):
  # GSM swaps left/right classes (its dataset's label pairs) and does not flip Jester; TSM does
  # not flip Something-Something or Jester; TRN flips every dataset and keeps the label.
  model = {'gsm': 'cstm_bninception', 'tsm': 'tsm_resnet50', 'trn': 'trn_bninception'}[recipe]
  config = defaults.experiment(dataset, model, 8, recipe=recipe)
  names = ['Pushing something from left to right', 'Pushing something from right to left',
           'Holding something']
  mapping = pipeline.flip_label_map(config.data, names)
  assert (mapping is not None) == flips
  if flips:
    assert (mapping == (1, 0, 2)) == swaps and (mapping == (0, 1, 2)) == (not swaps)
