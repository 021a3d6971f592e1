"""How far are bfloat16 gradients from float32 ones, on a trained state and at initialisation?

  python -m tools.bf16_check --workdir runs/demo/cstm [--batches 4] [--json out.json]

Loads a run's checkpoint and its training data, and computes the loss gradient of the same
parameters on the same batches (same crops, flips and dropout) with the model in float32 and
in bfloat16 (`model.dtype`; parameters, BatchNorm statistics, the attention and the loss stay
float32). Per parameter leaf it reports the relative difference ||g_bf16 - g_f32|| / ||g_f32||,
summarised by kind (conv kernels, biases, BatchNorm scales and offsets, temporal modules, the
head), and the cosine similarity of the whole gradient. The same comparison at a fresh
initialisation shows why init-time figures mislead: there the gradients are mostly noise.
"""
import json
import sys

import flax
import jax
import numpy as np
import optax
from absl import flags

from cstm_foundation import cli_flags, paths
from cstm_foundation.commands import run_main
from cstm_jax.config import finish, loader
from cstm_jax.distributed import sharding
from cstm_jax.train import program as program_lib, train_state
from cstm_jax.models.video import normalise
from cstm_jax.models.build import build_model
from input_pipeline import pipeline


def gradients(model, variables, batch, input_norm: str):
  """The loss gradient w.r.t. the parameters, and the loss, in training mode."""
  def loss_fn(params):
    logits, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                            normalise(batch['clips'], input_norm), train=True,
                            mutable=['batch_stats'], rngs={'dropout': jax.random.key(0)})
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch['labels']).mean()
  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables['params'])
  return grads, float(loss)


def leaf_kind(path: str) -> str:
  if '/head/' in f'/{path}/':
    return 'head'
  if any(m in path for m in ('/temporal/', 'temporal/')):
    return 'temporal module'
  leaf = path.rsplit('/', 1)[-1]
  if '/bn/' in f'/{path}' or path.startswith('bn/'):
    return f'BatchNorm {leaf}'
  return f'conv {leaf}'


def compare(grads32, grads16) -> dict:
  """Relative difference per leaf (by kind: median and worst) and the whole gradient's cosine."""
  flat32 = flax.traverse_util.flatten_dict(flax.core.unfreeze(grads32), sep='/')
  flat16 = flax.traverse_util.flatten_dict(flax.core.unfreeze(grads16), sep='/')
  by_kind, dot, norm32, norm16 = {}, 0.0, 0.0, 0.0
  for path, g32 in flat32.items():
    a, b = np.asarray(g32, np.float64), np.asarray(flat16[path], np.float64)
    if np.linalg.norm(a) > 0:
      by_kind.setdefault(leaf_kind(path), []).append(np.linalg.norm(b - a) / np.linalg.norm(a))
    dot, norm32, norm16 = dot + np.sum(a * b), norm32 + np.sum(a * a), norm16 + np.sum(b * b)
  return {'cosine': dot / np.sqrt(norm32 * norm16),
          'kinds': {k: {'leaves': len(v), 'median': float(np.median(v)), 'worst': float(max(v))}
                    for k, v in sorted(by_kind.items())}}


def define_flags(flag_values: flags.FlagValues) -> None:
  define = cli_flags.definer(flag_values)
  define('string', 'workdir', None, 'A training run (its config.json, checkpoints and data).',
         required=True)
  define('enum', 'which', 'latest', ['best', 'latest'], 'Which checkpoint of --workdir.')
  define('integer', 'batches', 4, 'Training batches to compare on (their gradients summed).',
         lower_bound=1)
  define('string', 'json', None, 'Write the results as JSON to this file.')


def main(argv=None) -> int:
  args = cli_flags.parse(argv, __doc__, define_flags)
  workdir = paths.resolve(args.workdir)
  config = finish.without_data(loader.load(workdir / 'config.json'))  # loads in-process
  program = program_lib.build(config, sharding.make_mesh(1, jax.devices()[:1]))
  trained, _ = train_state.restore_variables(program, workdir, args.which)
  iterator = iter(pipeline.train_dataset(config.data))
  batches = [next(iterator) for _ in range(args.batches)]
  results = {}
  initial = build_model(config.model).init(jax.random.key(1), batches[0]['clips'][:1].astype(
      np.float32))
  for state, variables in (('trained', trained), ('initialisation', initial)):
    summed = {}
    for dtype in ('float32', 'bfloat16'):
      model = build_model({**config.model.to_dict(), 'dtype': dtype})
      per_batch = [gradients(model, variables, b, program.input_norm) for b in batches]
      grads = jax.tree_util.tree_map(lambda *g: sum(g), *[g for g, _ in per_batch])
      summed[dtype] = (grads, float(np.mean([loss for _, loss in per_batch])))
    results[state] = {'loss_float32': summed['float32'][1], 'loss_bfloat16': summed['bfloat16'][1],
                      **compare(summed['float32'][0], summed['bfloat16'][0])}
  for state, r in results.items():
    print(f"{state}: loss {r['loss_float32']:.4f} (float32) {r['loss_bfloat16']:.4f} "
          f"(bfloat16), gradient cosine {r['cosine']:.5f}")
    for kind, k in r['kinds'].items():
      print(f"  {kind:24s} {k['leaves']:4d} leaves  relative difference median "
            f"{k['median']:.3f}  worst {k['worst']:.3f}")
  if args.json:
    paths.write_text(paths.resolve(args.json), json.dumps(results, indent=1) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(run_main(main))
