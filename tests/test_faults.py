"""Faults planted the way a user meets them: nothing is lost and no poisoned state is kept."""
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import ssv2_r2plus1d_18
from cstm_jax import checkpoints, convert, paths, train
from runs import smoke


def test_convert_refuses_an_output_folder_it_would_empty(tmp_path, capsys):
  weights = tmp_path / 'weights.npz'
  np.savez(weights, w=np.zeros(3, np.float32))
  (tmp_path / 'notes.txt').write_text('mine')
  for out in (tmp_path, tmp_path / 'weights.npz'):  # `--out .` beside the weights; the input
    with pytest.raises(SystemExit):
      convert.main(['--config', 'configs/ssv2_8f.py:smoke', '--torch', str(weights),
                    '--out', str(out)])
  err = capsys.readouterr().err
  assert 'holds the input' in err and 'would delete' in err
  assert weights.exists() and (tmp_path / 'notes.txt').read_text() == 'mine'

  folder = tmp_path / 'converted'
  folder.mkdir()
  (folder / 'other.txt').write_text('mine')
  resolve = paths.resolve
  problem = convert.output_problem(resolve(folder), resolve(weights), overwrite=False)
  assert 'not a converted checkpoint' in problem and '--overwrite' in problem
  assert convert.output_problem(resolve(folder), resolve(weights), overwrite=True) == ''
  earlier = tmp_path / 'earlier'
  checkpoints.save_variables(earlier, {'params': {'w': np.ones(2, np.float32)}})
  assert convert.output_problem(resolve(earlier), resolve(weights), overwrite=False) == ''
  assert convert.output_problem(resolve(tmp_path / 'new'), resolve(weights), False) == ''


def test_a_non_finite_step_is_never_saved(prepared_ssv2, tmp_path):
  # Checkpoints every step, logs rarely: before, the NaN state was saved between log steps.
  config = smoke(ssv2_r2plus1d_18, prepared_ssv2[0], optim__base_lr=1e30,
                 train__checkpoint_every_steps=1, train__log_every_steps=100,
                 train__eval_every_epochs=1000.0)
  with pytest.raises(FloatingPointError) as error:
    train.train_and_evaluate(config, tmp_path)
  message = str(error.value)
  assert 'nothing saved after it' in message
  saved = sorted(int(p.name) for p in (tmp_path / 'checkpoints').glob('*') if p.name.isdigit())
  if saved:
    assert f'the last checkpoint is step {saved[-1]}' in message
  else:
    assert 'there is no checkpoint yet' in message
  model, _, tx, clips_shape = train.model_and_optimizer(config, steps_per_epoch=1)
  mesh = train.setup_mesh(config)
  abstract, _ = train.state_layout(model, tx, clips_shape, mesh)
  run = checkpoints.RunCheckpoints(tmp_path)
  for step in saved:
    state = run.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))['state']
    assert all(np.isfinite(np.asarray(leaf)).all()
               for leaf in jax.tree_util.tree_leaves(state.params)), step
  run.close()
