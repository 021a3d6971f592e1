"""The fine-tuning path of docs/inference.md, end to end on synthetic data: PyTorch ImageNet weights ->
convert -> train an SSv2 config from them -> evaluate -> predict on videos -> export and run the
export in a fresh process."""
import csv
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

import torch_reference as ref
from torch_reference import reference_normalise
from cstm_jax.train import checkpoints, experiment, loop
from cstm_jax.config import loader
from cstm_jax.inference import convert, export, predict
from cstm_foundation import commands
from cstm_jax.train.steps import make_eval_step
from input_pipeline import pipeline
from runs import built


ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = str(ROOT / 'configs' / 'ssv2_16f.py') + ':smoke'


@pytest.fixture(scope='module')
def finetuned(prepared_ssv2, tmp_path_factory):
  """A smoke CSTM run on synthetic SSv2 started from converted PyTorch ImageNet weights."""
  root = tmp_path_factory.mktemp('finetune')
  config = loader.load(CONFIG)
  frames, width = config.model.num_frames, config.model.width
  # TSN's ImageNet BN-Inception: bare layer names and a 1000-way `fc`.
  imagenet = ref.randomise(ref.TSN(ref.InceptionBase('bninception', width, frames), 1000))
  weights = {k.replace('base_model.', '').replace('new_fc', 'fc'): v
             for k, v in imagenet.state_dict().items()}
  torch.save(weights, root / 'bn_inception.pth')
  assert convert.main(['--config', CONFIG, '--torch', str(root / 'bn_inception.pth'),
                       '--out', str(root / 'pretrained')]) == 0

  config.data.data_dir = str(prepared_ssv2[0])
  config.model.num_classes = prepared_ssv2[1]['classes']
  config.train.init_from = str(root / 'pretrained')
  config.train.eval_every_epochs = 1000.0
  workdir = root / 'run'
  final = experiment.run(config, workdir)['1x1']
  return {'root': root, 'workdir': workdir, 'config': config, 'final': final,
          'weights': weights}


def test_training_starts_from_the_converted_weights(finetuned):
  config = finetuned['config']
  state, start = loop.initial_state(
      built(config, steps_per_epoch=10),
      run_checkpoints=checkpoints.RunCheckpoints(finetuned['root'] / 'new'), train_iterator=None)
  assert start == 0
  kernel = np.asarray(state.params['backbone']['conv1_7x7_s2']['conv']['kernel'])
  np.testing.assert_array_equal(
      kernel, finetuned['weights']['conv1_7x7_s2.weight'].numpy().transpose(2, 3, 1, 0))
  assert state.params['head']['kernel'].shape[-1] == config.model.num_classes
  # Evaluating the trained run reproduces its final numbers.
  config.mode, config.eval.checkpoint = 'eval', 'latest'
  again = experiment.run(config, finetuned['workdir'])['1x1']
  assert again['top1'] == pytest.approx(finetuned['final']['top1'])


def test_predict_a_video_a_frame_folder_and_a_folder_of_videos(finetuned, synthetic_ssv2,
                                                                prepared_ssv2, tmp_path, capsys):
  workdir = str(finetuned['workdir'])
  download, written = synthetic_ssv2
  webms = sorted(download.rglob('*.webm'))
  classes = json.loads((finetuned['workdir'] / 'classes.json').read_text())
  assert predict.main(['--workdir', workdir, '--video', str(webms[0]), '--json',
                       '--topk', str(len(classes))]) == 0
  top = json.loads(capsys.readouterr().out)['top']
  assert sorted(t['class'] for t in top) == sorted(classes)  # every class, once
  probabilities = [t['probability'] for t in top]
  assert probabilities == sorted(probabilities, reverse=True)
  assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
  assert predict.main(['--workdir', workdir, '--video', str(webms[0]), '--topk', '2']) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == (f'{webms[0]}: top 2 of {len(classes)} classes, 1x1 views, '
                      f'{workdir} (best checkpoint)')
  assert [line.split()[1:] for line in lines[1:]] == [t['class'].split() for t in top[:2]]

  # A folder of the dataset's own JPEG frames: exactly what evaluation computes for the record.
  config = finetuned['config']
  source, _ = pipeline.open_split(config.data, config.data.eval_split)
  record = source[0]
  frames = tmp_path / 'frames'
  frames.mkdir()
  for i, jpeg in enumerate(record['frames']):
    (frames / f'{i + 1:05d}.jpg').write_bytes(jpeg)
  assert predict.main(['--workdir', workdir, '--video', str(frames), '--json',
                       '--topk', '1', '--views', '2x3']) == 0
  got = json.loads(capsys.readouterr().out)['top'][0]
  loaded = predict.load_model(workdir)
  # What evaluation runs on the record.
  batch = pipeline.eval_transform(config.data, (2, 3, False))({**record, 'index': 0})
  logits, _ = jax.jit(make_eval_step(loaded.program.model, 'bgr255'))(
      loaded.variables, {'clips': batch['clips'][None]})
  expected = np.asarray(jax.nn.softmax(logits[0]))
  assert got['class'] == classes[int(expected.argmax())]
  assert got['probability'] == pytest.approx(float(expected.max()), abs=1e-5)

  # A folder of videos, one of them corrupt: a CSV row each, the corrupt one reported.
  videos = tmp_path / 'videos'
  videos.mkdir()
  for webm in webms[:2]:
    (videos / webm.name).write_bytes(webm.read_bytes())
  (videos / 'broken.webm').write_bytes(webms[0].read_bytes()[:300])
  out = tmp_path / 'predictions.csv'
  assert predict.main(['--workdir', workdir, '--video', str(videos), '--out', str(out),
                       '--json']) == 0
  assert json.loads(capsys.readouterr().out)['failed'] == 1
  rows = list(csv.DictReader(out.open()))
  assert [r['video'] for r in rows] == sorted(['broken.webm'] + [w.name for w in webms[:2]])
  broken = next(r for r in rows if r['video'] == 'broken.webm')
  assert broken['error'] and not broken['class_1']
  assert all(r['class_1'] in classes and not r['error'] for r in rows if r is not broken)


def test_predict_errors_are_clear(finetuned, tmp_path, capsys):
  workdir = str(finetuned['workdir'])
  (tmp_path / 'noise.webm').write_bytes(b'not a video at all')
  assert predict.main(['--workdir', workdir, '--video', str(tmp_path / 'noise.webm')]) == 1
  assert 'noise.webm: cannot decode video' in capsys.readouterr().err
  # A converted checkpoint given with the config of another model.
  assert commands.run_main(predict.main, [
      '--checkpoint', str(finetuned['root'] / 'pretrained'), '--config',
      str(ROOT / 'configs' / 'ssv2_tsm_resnet50.py'), '--video', str(tmp_path / 'noise.webm')]) == 1
  err = capsys.readouterr().err
  assert 'does not match the model of config' in err and 'missing' in err
  # A run's checkpoint read with another model's config.
  assert commands.run_main(predict.main, [
      '--workdir', workdir, '--config', str(ROOT / 'configs' / 'ssv2_r2plus1d_18.py') + ':smoke',
      '--video', str(tmp_path / 'noise.webm')]) == 1
  err = capsys.readouterr().err
  assert 'was written by a different model or optimizer' in err
  assert "model.backbone: 'bninception' in the checkpoint, 'r2plus1d_18' now" in err


def test_export_runs_in_a_fresh_process_and_matches(finetuned, tmp_path):
  out = tmp_path / 'model.jax'
  assert export.main(['--workdir', str(finetuned['workdir']), '--out', str(out),
                      '--platforms', 'cpu']) == 0
  meta = json.loads(pathlib.Path(f'{out}.json').read_text())
  config = finetuned['config']
  assert meta['input']['shape'] == ['batch', config.data.num_frames, config.data.crop,
                                    config.data.crop, 3]
  clips = np.random.default_rng(0).integers(0, 256, (3, *meta['input']['shape'][1:]), np.uint8)
  np.save(tmp_path / 'clips.npy', clips)
  # Only jax and numpy in the fresh process: the model code is not imported.
  code = ('import sys, jax, numpy as np; '
          f'e = jax.export.deserialize(open({str(out)!r}, "rb").read()); '
          f'x = np.load({str(tmp_path / "clips.npy")!r}); '
          f'np.save({str(tmp_path / "logits.npy")!r}, np.concatenate([e.call(x), e.call(x[:1])])); '
          'assert not any(m.startswith(("cstm_jax", "flax")) for m in sys.modules)')
  subprocess.run([sys.executable, '-c', code], check=True, cwd=tmp_path)
  exported_logits = np.load(tmp_path / 'logits.npy')
  loaded = predict.load_model(str(finetuned['workdir']))
  model, variables = loaded.program.model, loaded.variables
  # The exported function normalises inside, as the host did before clips went as uint8.
  normalised = reference_normalise(clips, 'bgr255')  # BN-Inception's
  expected = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables,
                                                                           normalised))
  np.testing.assert_allclose(exported_logits[:3], expected, atol=1e-5)
  np.testing.assert_allclose(exported_logits[3:], expected[:1], atol=1e-5)


def test_export_takes_a_test_protocol_as_evaluation_runs_it(finetuned, tmp_path):
  out = tmp_path / 'full.jax'
  assert export.main(['--workdir', str(finetuned['workdir']), '--out', str(out),
                      '--platforms', 'cpu', '--views', '2x3full']) == 0
  meta = json.loads(pathlib.Path(f'{out}.json').read_text())
  config = finetuned['config']
  side = config.data.test_scale  # full resolution: crops of the test scale
  assert meta['views'] == '2x3full'
  assert meta['input']['shape'] == ['batch', 6, config.data.num_frames, side, side, 3]
  clips = np.random.default_rng(1).integers(0, 256, (2, *meta['input']['shape'][1:]), np.uint8)
  exported = jax.export.deserialize(out.read_bytes())
  loaded = predict.load_model(str(finetuned['workdir']))
  expected, _ = loaded.program.eval_step(loaded.variables, {'clips': clips})
  np.testing.assert_allclose(exported.call(clips), expected, atol=1e-5)
  with pytest.raises(SystemExit):
    export.main(['--workdir', str(finetuned['workdir']), '--out', str(out), '--views', '2x4'])
