"""TSN sampling and clip transforms on hand-computed cases."""
import numpy as np
import pytest

from input_pipeline import labels, sampling, transforms, video_io


def test_centre_and_start_indices():
  np.testing.assert_array_equal(sampling.centre_indices(16, 8), [1, 3, 5, 7, 9, 11, 13, 15])
  np.testing.assert_array_equal(sampling.start_indices(16, 8), [0, 2, 4, 6, 8, 10, 12, 14])
  np.testing.assert_array_equal(sampling.centre_indices(10, 4), [1, 3, 6, 8])  # tick 2.5
  np.testing.assert_array_equal(sampling.start_indices(10, 4), [0, 2, 5, 7])
  np.testing.assert_array_equal(sampling.eval_indices(16, 8, 2),
                                [[1, 3, 5, 7, 9, 11, 13, 15], [0, 2, 4, 6, 8, 10, 12, 14]])


def test_short_videos_still_give_t_frames_in_order():
  np.testing.assert_array_equal(sampling.centre_indices(4, 8), [0, 0, 1, 1, 2, 2, 3, 3])
  np.testing.assert_array_equal(sampling.start_indices(4, 8), [0, 0, 1, 1, 2, 2, 3, 3])
  np.testing.assert_array_equal(sampling.centre_indices(1, 8), [0] * 8)
  rng = np.random.default_rng(0)
  # 3 frames in 8 segments: each segment holds exactly one frame, so training is determined.
  np.testing.assert_array_equal(sampling.train_indices(3, 8, rng), [0, 0, 0, 1, 1, 1, 2, 2])


def test_training_draws_one_random_frame_per_segment():
  rng = np.random.default_rng(0)
  draws = np.stack([sampling.train_indices(16, 8, rng) for _ in range(200)])
  segment_starts = np.arange(8) * 2
  assert ((draws == segment_starts) | (draws == segment_starts + 1)).all()
  assert (draws == segment_starts).any(axis=0).all() and (draws == segment_starts + 1).any(
      axis=0).all()


def test_the_thirteen_fixed_offsets():
  # 340 x 256 frame, 224 x 224 crop: steps of 29 and 8 pixels.
  offsets = transforms.fixed_offsets(340, 256, 224, 224)
  assert len(offsets) == 13 == len(set(offsets))
  assert offsets[:5] == [(0, 0), (116, 0), (0, 32), (116, 32), (58, 16)]
  assert set(offsets[5:]) == {(0, 16), (116, 16), (58, 32), (58, 0), (29, 8), (87, 8), (29, 24),
                              (87, 24)}


def test_multiscale_crop_sizes_come_from_neighbouring_scales():
  rng = np.random.default_rng(0)
  allowed = {256, 224, 192, 168}  # 256 * (1, .875, .75, .66), 224 snapped to the crop
  for _ in range(300):
    x, y, w, h = transforms.multiscale_crop_box(340, 256, 224, rng=rng)
    assert w in allowed and h in allowed and (x, y) in transforms.fixed_offsets(340, 256, w, h)
    order = sorted(allowed, reverse=True)
    assert abs(order.index(w) - order.index(h)) <= 1
    assert x + w <= 340 and y + h <= 256


def jpegs_of(frames):
  return [video_io.encode_jpeg(f, quality=100) for f in frames]


def test_train_clip_crops_every_frame_the_same_way():
  y, x = np.mgrid[:256, :340]
  base = np.stack([x * 0.5, y * 0.6, np.full_like(x, 50.0)], -1)  # a gradient: crops differ
  frames = [(base + 10 * i).astype(np.uint8) for i in range(6)]
  clip, _ = transforms.train_clip(jpegs_of(frames), 4, 112, rng=np.random.default_rng(0))
  assert clip.shape == (4, 112, 112, 3) and clip.dtype == np.uint8
  # Frames differ by a constant brightness, so identical crops differ by a constant too.
  diffs = clip[1:].astype(int) - clip[:-1].astype(int)
  assert all(np.median(d) > 5 for d in diffs)
  assert max(np.percentile(np.abs(d - np.median(d)), 90) for d in diffs) <= 3


def test_flip_mirrors_the_clip_and_reports_it():
  frame = np.zeros((64, 64, 3), np.uint8)
  frame[:, :8] = 255  # a bright band on the left
  flips = 0
  for seed in range(20):
    clip, flipped = transforms.train_clip(jpegs_of([frame] * 2), 2, 64,
                                          rng=np.random.default_rng(seed), flip=True, scales=(1.0,))
    bright_left = clip[0, :, :8].mean() > clip[0, :, -8:].mean()
    assert bright_left != flipped
    flips += flipped
  assert 0 < flips < 20


def test_flip_label_map_swaps_exactly_the_mirrored_pairs():
  names = ['Pushing something from left to right', 'Pushing something from right to left',
           'Turning the camera left while filming something',
           'Turning the camera right while filming something',
           'Turning something clockwise', 'Turning something counterclockwise',
           'Putting something on a surface', 'Moving something left']  # no partner: unchanged
  assert labels.flip_label_map(names) == [1, 0, 3, 2, 5, 4, 6, 7]


def test_eval_views():
  frames = [np.full((128, 200, 3), i * 20, np.uint8) for i in range(10)]
  views = transforms.eval_clips(jpegs_of(frames), 4, 112, test_scale=128, num_clips=2, num_crops=3)
  assert views.shape == (6, 4, 112, 112, 3)
  # Views 0-2 are the centre clip (frames 1, 3, 6, 8), 3-5 the start clip (0, 2, 5, 7).
  np.testing.assert_allclose(views[0, :, 50, 50, 0], [20, 60, 120, 160], atol=2)
  np.testing.assert_allclose(views[5, :, 50, 50, 0], [0, 40, 100, 140], atol=2)
  assert transforms.three_crop_boxes(200, 128, 112) == [(0, 8, 112, 112), (44, 8, 112, 112),
                                                        (88, 8, 112, 112)]


def test_eval_clips_take_the_crops_of_a_test_protocol():
  pixel = np.array([[[10, 20, 30]]], np.uint8)
  with pytest.raises(ValueError, match='num_crops'):
    transforms.eval_clips(jpegs_of([pixel.repeat(8, 0).repeat(8, 1)]), 2, 8, test_scale=8,
                          num_crops=2)


def test_the_test_protocols_crop_as_the_originals():
  # A frame already at the test scale (short side 128), so the crops alone differ.
  frame = np.random.default_rng(0).integers(0, 256, (128, 171, 3), np.uint8)
  jpegs = jpegs_of([frame])
  decoded = transforms.decode_frames(jpegs, [0])[0]
  crops = lambda n, size: transforms.eval_clips(jpegs, 1, size, test_scale=128, num_crops=n)[:, 0]
  cut = lambda x, y, size: decoded[y:y + size, x:x + size]
  # TSN's GroupOverSample (GSM's and TSM's transforms.py): the offsets of
  # fill_fix_offset(False, ...), quarter steps of the free width (59 // 4) and height (16 // 4),
  # each crop followed by its mirror; five crops without mirrors (GSM's GroupFiveCrops).
  corners = [(0, 0), (4 * 14, 0), (0, 4 * 4), (4 * 14, 4 * 4), (2 * 14, 2 * 4)]
  expected = [c for x, y in corners for c in (cut(x, y, 112), cut(x, y, 112)[:, ::-1])]
  np.testing.assert_array_equal(crops(10, 112), np.stack(expected))
  np.testing.assert_array_equal(crops(5, 112), np.stack(expected[::2]))
  # TSM's GroupFullResSample at full resolution (crops of the test scale): left, centre and
  # right at 0, 2 and 4 quarter steps of the free width (43 // 4), no mirrors.
  np.testing.assert_array_equal(crops(3, 128), np.stack([cut(x, 0, 128) for x in (0, 20, 40)]))
  # The centre crop (GroupCenterCrop, torchvision's CenterCrop): the free space halved and
  # rounded, 59 / 2 -> 30.
  np.testing.assert_array_equal(crops(1, 112)[0], cut(30, 8, 112))
