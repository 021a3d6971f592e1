"""Training and evaluation as users run them: smoke runs, stops anywhere and resumes, device
counts, errors. (Several processes: tests/test_launch.py and tests/test_cloud_storage.py.)"""
import json
import pathlib
import random
import time

import jax
import numpy as np
import pytest

from configs import ssv2_8f, ssv2_r2plus1d_18
from cstm_jax.config import finish
from cstm_jax.train import checkpoints, experiment, loop, program, train_state
from cstm_jax.analysis import class_gains
from cstm_jax import demo
from cstm_jax.distributed import sharding
from conftest import SYNTHETIC
from cstm_foundation import commands
from input_pipeline import synthetic
from runs import smoke
from tools import chaos

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_smoke_run_writes_everything_and_eval_mode_reproduces_it(prepared_ssv2, tmp_path,
                                                                 capfd):
  # R(2+1)D compiles fastest; tests/test_finetune.py trains CSTM on BN-Inception the same way.
  config = smoke(ssv2_r2plus1d_18, prepared_ssv2[0], train__eval_every_epochs=3.0)
  final = experiment.run(config, tmp_path)['1x1']
  # Evaluation shows its progress; not a terminal here, so as whole lines.
  assert 'evaluation 1x1: 100%|' in capfd.readouterr().err
  confusion = np.asarray(final['confusion'])
  assert final['examples'] == confusion.sum() == 8  # every validation clip once
  assert final['top1'] == pytest.approx(100 * np.trace(confusion) / 8)
  assert final['top1'] <= final['top5']
  saved = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
  assert saved == [4, 6]  # keep_checkpoints = 2
  assert list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records if 'loss' in r] == [2, 4, 6]
  assert {'loss', 'lr', 'clips_per_s', 'grad_norm', 'input_wait_s',
          'input_wait_fraction'} <= set(records[0])
  assert all(0 <= r['input_wait_fraction'] <= 1 for r in records if 'loss' in r)
  best = json.loads((tmp_path / 'best' / 'best.json').read_text())
  assert best['step'] in (3, 6) and best['top1'] >= max(r.get('val_top1', 0) for r in records)
  for png in ('training_curves.png', 'eval/final_1x1_confusion.png', 'eval/final_1x1_tsne.png'):
    assert (tmp_path / png).stat().st_size > 1000
  config.mode, config.eval.checkpoint = 'eval', 'latest'
  again = experiment.run(config, tmp_path)['1x1']
  assert again['step'] == 6
  for key in ('top1', 'top5', 'mean_class_accuracy'):
    assert again[key] == pytest.approx(final[key])
  np.testing.assert_array_equal(again['confusion'], final['confusion'])


def test_an_input_bound_run_says_so_and_names_the_loader_setting(prepared_ssv2, tmp_path,
                                                                   monkeypatch, caplog):
  # A loader far slower than the step (0.3 s a clip, 2.4 s a batch): once the batches made
  # during the compile are used up, the devices wait for most of every window, and the log says
  # which setting to raise.
  from input_pipeline import pipeline
  transform = pipeline.TrainTransform.__call__

  def slow(self, record, rng):
    time.sleep(0.3)
    return transform(self, record, rng)

  monkeypatch.setattr(pipeline.TrainTransform, '__call__', slow)
  config = smoke(ssv2_r2plus1d_18, prepared_ssv2[0], train__max_steps=8,
                 train__eval_every_epochs=1000.0)
  with caplog.at_level('WARNING'):
    experiment.run(config, tmp_path)
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  waits = [r['input_wait_fraction'] for r in records if 'loss' in r]
  assert len(waits) == 4 and max(waits) > 0.5
  warnings = [r.getMessage() for r in caplog.records if 'input-bound' in r.getMessage()]
  assert len(warnings) == 1 and 'data.num_workers' in warnings[0]  # once per 10 minutes


def test_a_run_stopped_anywhere_resumes_to_the_uninterrupted_result(prepared_ssv2, tmp_path):
  # `tools/chaos.py` (`make chaos`: a longer soak, two processes): the smoke run of the test above
  # (an evaluation at step 3, the final one at 6), here uninterrupted, then in subprocesses with
  # loader workers, stopped three times at random moments (SIGKILL, or SIGTERM or SIGINT to the
  # process group) and started again each time. Bit-identical parameters, metrics.jsonl without
  # torn or repeated records, no traceback, one line and status 0 for every stop request.
  config = smoke(ssv2_r2plus1d_18, prepared_ssv2[0], train__eval_every_epochs=3.0)
  experiment.run(config, tmp_path / 'straight')
  seed = random.randrange(2**31)  # a new draw each time; the report names it to replay it
  code = chaos.main(['--kills', '3', '--steps', '6', '--eval_every_epochs', '3',
                     '--checkpoint_every_steps', '2', '--devices', str(jax.device_count()),
                     '--straight', str(tmp_path / 'straight'), '--window_s', '20',
                     '--seed', str(seed), '--out', str(tmp_path / 'chaos'),
                     '--data_dir', str(prepared_ssv2[0])])
  report = json.loads((tmp_path / 'chaos' / 'report.json').read_text())
  assert code == 0 and report['failures'] == [], json.dumps(report, indent=1)
  assert report['stops'], report  # at least one landed before the run ended


def test_a_run_resumed_between_accumulated_batches_ends_as_the_uninterrupted_one(prepared_ssv2,
                                                                                 tmp_path):
  # GSM's recipe sums two batches' gradients per optimizer step: a run that stops after the
  # first of them (step 3) saves the running sum with the state, and resumes to the same result.
  overrides = dict(optim__grad_accum_steps=2, train__checkpoint_every_steps=3,
                   train__eval_every_epochs=1000.0)
  experiment.run(smoke(ssv2_r2plus1d_18, prepared_ssv2[0], train__max_steps=6, **overrides),
                 tmp_path / 'straight')
  for steps in (3, 6):
    experiment.run(smoke(ssv2_r2plus1d_18, prepared_ssv2[0], train__max_steps=steps,
                         **overrides), tmp_path / 'resumed')
  (step, straight), (resumed_step, resumed) = (chaos.final_params(tmp_path / 'straight'),
                                               chaos.final_params(tmp_path / 'resumed'))
  assert step == resumed_step == 6
  assert all(np.array_equal(a, b) for a, b in zip(straight, resumed)) and len(straight) > 10


# The smoke run's model and schedule (the classes and steps per epoch of its dataset): the tests
# below reuse its compiled initial state and eight-device train step from the compile cache.
SMOKE_CLASSES = len(synthetic.class_names())
SMOKE_STEPS_PER_EPOCH = SYNTHETIC['train'] // ssv2_r2plus1d_18.get_config('smoke').data.batch_size


def test_one_device_and_eight_devices_give_the_same_step():
  assert jax.device_count() == 8
  config = ssv2_r2plus1d_18.get_config('smoke')
  config.model.num_classes = SMOKE_CLASSES
  config = finish.without_data(config)
  programs = [program.build(config, sharding.make_mesh(1, devices),
                            steps_per_epoch=SMOKE_STEPS_PER_EPOCH)
              for devices in (jax.devices()[:1], jax.devices())]
  clips_shape = programs[0].clips_shape
  rng = np.random.default_rng(0)
  batch = {'clips': rng.integers(0, 256, clips_shape, np.uint8),
           'labels': rng.integers(0, SMOKE_CLASSES, clips_shape[0]).astype(np.int32)}
  # On the host: each mesh gets its own copy to donate.
  initial = jax.device_get(train_state.variables_of(programs[1].init_state(jax.random.key(0))))
  results = []
  for one in programs:
    state = one.state_with(initial)
    state, metrics = one.train_step(state, sharding.global_batch(batch, one.mesh),
                                    jax.random.key(1))
    results.append((float(metrics['loss']), jax.tree_util.tree_leaves(state.params)))
  assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
  for a, b in zip(results[0][1], results[1][1]):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_start_errors_are_clear(prepared_ssv2, tmp_path):
  config = smoke(ssv2_8f, prepared_ssv2[0], data__batch_size=6)
  with pytest.raises(ValueError, match='global batch size 6 is not divisible by the 8 devices'):
    experiment.run(config, tmp_path / 'a')
  config = smoke(ssv2_8f, tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='python -m input_pipeline.prepare'):
    experiment.run(config, tmp_path / 'b')


def test_init_from_loads_the_backbone_and_keeps_a_new_head(tmp_path):
  config = ssv2_r2plus1d_18.get_config('smoke')
  config.model.num_classes = 174
  mesh = sharding.make_mesh(1)
  source = program.build(finish.without_data(config), mesh, steps_per_epoch=10).init_state(
      jax.random.key(7))
  checkpoints.save_variables(tmp_path / 'pretrained', {'params': source.params,
                                                       'batch_stats': source.batch_stats})
  config.model.num_classes = SMOKE_CLASSES
  config.train.init_from = str(tmp_path / 'pretrained')
  smoke_program = program.build(finish.without_data(config), mesh,
                                steps_per_epoch=SMOKE_STEPS_PER_EPOCH)
  run = checkpoints.RunCheckpoints(tmp_path / 'run')
  state, start = loop.initial_state(smoke_program, run_checkpoints=run, train_iterator=None)
  assert start == 0 and state.params['head']['kernel'].shape[-1] == 12
  kernel = lambda p: np.asarray(p['backbone']['layer2_0']['conv1']['conv_s']['conv']['kernel'])
  np.testing.assert_array_equal(kernel(state.params), kernel(source.params))
  stats = lambda s: np.asarray(s['backbone']['stem_spatial']['bn']['mean'])
  np.testing.assert_array_equal(stats(state.batch_stats), stats(source.batch_stats))
  fresh = smoke_program.init_state(jax.random.key(0))
  assert not np.array_equal(kernel(fresh.params), kernel(source.params))


def write_result(run, class_names, per_class, top1):
  (run / 'eval').mkdir(parents=True)
  (run / 'eval' / 'final_1x1.json').write_text(json.dumps(
      {'class_names': class_names, 'per_class_top1': per_class, 'top1': top1}))


def test_compare_plots_the_classes_that_improve_most(tmp_path, capsys):
  names = ['Moving something up', 'Moving something down', 'Holding something still']
  write_result(tmp_path / 'tsn', names, [50.0, 40.0, 90.0], 60.0)
  write_result(tmp_path / 'cstm', names, [95.0, 100.0, 85.0], 93.3)
  assert class_gains.main([str(tmp_path / 'tsn'), str(tmp_path / 'cstm'), '--top', '3']) == 0
  out = capsys.readouterr().out
  order = [out.index(n) for n in ('Moving something down', 'Moving something up',
                                  'Holding something still')]
  assert order == sorted(order) and '+60.0' in out
  assert (tmp_path / 'cstm' / 'eval' / 'gains_over_tsn.png').stat().st_size > 1000
  assert commands.run_main(class_gains.main, [str(tmp_path / 'tsn'), str(tmp_path / 'missing')]) == 1


def test_pair_accuracy_reads_the_time_reversed_pairs():
  confusion = np.eye(12, dtype=int) * 10
  assert demo.pair_accuracy(confusion) == 100.0
  a, b = demo.synthetic.time_reversed_pairs()[0]
  confusion[a, a], confusion[a, b] = 5, 5
  assert demo.pair_accuracy(confusion) == pytest.approx(100 * 95 / 100)


def test_a_resumed_run_drops_the_metrics_logged_after_its_checkpoint(tmp_path):
  from cstm_jax.train.writer import MetricWriter, read_metrics
  writer = MetricWriter(tmp_path)
  for step in (2, 4, 6):
    writer.write(step, {'loss': 1.0 / step})
  writer.close()  # killed after step 6 was logged; the checkpoint it resumes from is step 4
  writer = MetricWriter(tmp_path, start_step=4)
  writer.write(6, {'loss': 0.5})
  writer.close()
  assert [(r['step'], r['loss']) for r in read_metrics(tmp_path)] == [(2, 0.5), (4, 0.25),
                                                                      (6, 0.5)]
