"""Worker for tests/test_train.py: a few training steps of a tiny model on fixed global batches,
as one of several jax.distributed CPU processes or as a single process.

  python tests/multiprocess_train.py OUT.npz NUM_PROCESSES PROCESS_ID PORT DEVICES_PER_PROCESS
"""
import os
import sys


def main(out, num_processes, process_id, port, local_devices):
  os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={local_devices}'
  import jax
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if num_processes > 1:
    jax.distributed.initialize(f'localhost:{port}', num_processes, process_id)
  import numpy as np
  from configs import ssv2_r2plus1d_18
  from cstm_jax import sharding, train

  config = ssv2_r2plus1d_18.get_config('smoke')
  mesh = sharding.make_mesh(1)
  model, schedule, tx, clips_shape = train.model_and_optimizer(config, steps_per_epoch=10)
  state, shardings = train.create_train_state(model, tx, clips_shape, mesh, jax.random.key(0))
  step = train.jit_train_step(train.make_train_step(model, schedule), shardings, mesh)
  size = clips_shape[0]
  local = size // jax.process_count()
  rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
  losses = []
  for i in range(3):
    rng = np.random.default_rng(i)
    batch = {'clips': rng.normal(size=clips_shape).astype(np.float32),
             'labels': rng.integers(0, config.model.num_classes, size).astype(np.int32)}
    state, metrics = step(state, sharding.global_batch(
        {k: v[rows] for k, v in batch.items()}, mesh), jax.random.key(1))
    losses.append(float(metrics['loss']))
  leaves = [sharding.to_host(x) for x in jax.tree_util.tree_leaves(state.params)]
  if jax.process_index() == 0:
    np.savez(out, losses=np.array(losses), **{f'param{i}': x for i, x in enumerate(leaves)})


if __name__ == '__main__':
  main(sys.argv[1], *map(int, sys.argv[2:]))
