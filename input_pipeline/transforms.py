"""Clip transforms: decode the sampled frames, crop, resize, flip (docs/design.md, "Data"). Clips
stay uint8 RGB: the steps normalise them on the device (`cstm_jax/models/video.py`).

A box is `(x, y, w, h)` in pixels of the decoded frame. Clips are `[T, H, W, 3]`.
"""
from typing import NamedTuple

import cv2
import numpy as np

from input_pipeline import sampling, video_io
from input_pipeline.conventions import TSN_SCALES


def fixed_offsets(image_w: int, image_h: int, crop_w: int, crop_h: int) -> list[tuple[int, int]]:
  """TSN's 13 crop positions: corners, centre, edge midpoints and the four quarter points."""
  w, h = (image_w - crop_w) // 4, (image_h - crop_h) // 4
  grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0),
          (1, 1), (3, 1), (1, 3), (3, 3)]
  return [(i * w, j * h) for i, j in grid]


class Box(NamedTuple):
  """A crop: its top-left corner (x, y) and its size (w, h), in pixels."""
  x: int
  y: int
  w: int
  h: int


def multiscale_crop_box(image_w: int, image_h: int, crop_size: int, *, rng: np.random.Generator,
                        scales=TSN_SCALES, max_distort: int = 1) -> Box:
  """TSN multi-scale crop: width and height from neighbouring scales of the short side,
  position from the 13 fixed offsets."""
  base = min(image_w, image_h)
  sizes = [int(base * s) for s in scales]
  snap = lambda s: crop_size if abs(s - crop_size) < 3 else s
  pairs = [(snap(w), snap(h)) for i, h in enumerate(sizes) for j, w in enumerate(sizes)
           if abs(i - j) <= max_distort]
  crop_w, crop_h = pairs[rng.integers(len(pairs))]
  crop_w, crop_h = min(crop_w, image_w), min(crop_h, image_h)
  offsets = fixed_offsets(image_w, image_h, crop_w, crop_h)
  x, y = offsets[rng.integers(len(offsets))]
  return Box(x, y, crop_w, crop_h)


def centre_box(image_w: int, image_h: int, crop: int) -> Box:
  """The centre crop as torchvision's `CenterCrop` (TSN's `GroupCenterCrop`) places it: the free
  space halved and rounded (half to even, Python's and torchvision's `round`)."""
  crop_w, crop_h = min(crop, image_w), min(crop, image_h)
  return Box(int(round((image_w - crop_w) / 2)), int(round((image_h - crop_h) / 2)), crop_w,
             crop_h)


def three_crop_boxes(image_w: int, image_h: int, crop: int) -> list[Box]:
  """Three crops along the long side: on a landscape frame TSM's `GroupFullResSample` offsets
  (ops/transforms.py: left, centre and right at 0, 2 and 4 quarter steps of the free width, at
  2 quarter steps of the free height); on a portrait frame, where those three coincide, top,
  centre and bottom the same way."""
  w, h = min(crop, image_w), min(crop, image_h)
  w_step, h_step = (image_w - w) // 4, (image_h - h) // 4
  steps = [(0, 2), (2, 2), (4, 2)] if image_w >= image_h else [(2, 0), (2, 2), (2, 4)]
  return [Box(i * w_step, j * h_step, w, h) for i, j in steps]


def decode_frames(jpegs, indices) -> dict[int, np.ndarray]:
  """Decodes only the frames at `indices` (each distinct frame once)."""
  return {int(i): video_io.decode_jpeg(jpegs[int(i)], f'frame {int(i)}') for i in set(indices)}


def crop_resize(frame: np.ndarray, box, size: int, *, out: np.ndarray | None = None,
                flip: bool = False) -> np.ndarray:
  """`frame`'s `box` resized to `size` x `size` (and mirrored when `flip`), written into `out`
  (`[size, size, 3]` uint8) when given: no intermediate copies."""
  x, y, w, h = box
  patch = frame[y:y + h, x:x + w]
  out = np.empty((size, size, 3), np.uint8) if out is None else out
  resize = lambda dst=None: cv2.resize(patch, (size, size), dst=dst,
                                       interpolation=cv2.INTER_LINEAR)
  if flip:
    cv2.flip(patch if patch.shape[:2] == (size, size) else resize(), 1, dst=out)
  elif patch.shape[:2] != (size, size):
    resize(out)
  else:
    out[...] = patch
  return out


def train_clip(jpegs, num_frames: int, crop: int, *, rng: np.random.Generator, flip: bool = False,
               scales=TSN_SCALES) -> tuple[np.ndarray, bool]:
  """A training clip `[T, crop, crop, 3]` uint8 RGB and whether it was flipped: TSN segment
  sampling, one multi-scale crop for every frame, a horizontal flip with probability 1/2."""
  indices = sampling.train_indices(len(jpegs), num_frames, rng)
  return train_crop(decode_frames(jpegs, indices), indices, crop, rng=rng, flip=flip, scales=scales)


def train_crop(frames: dict[int, np.ndarray], indices, crop: int, *, rng: np.random.Generator,
               flip: bool = False, scales=TSN_SCALES) -> tuple[np.ndarray, bool]:
  """`train_clip` after decoding: the decoded `frames` at `indices` cropped, resized and maybe
  flipped into one uint8 clip `[T, crop, crop, 3]`."""
  height, width = next(iter(frames.values())).shape[:2]
  box = multiscale_crop_box(width, height, crop, rng=rng, scales=scales)
  flipped = bool(flip and rng.random() < 0.5)
  clip = np.empty((len(indices), crop, crop, 3), np.uint8)
  for t, i in enumerate(indices):
    crop_resize(frames[int(i)], box, crop, out=clip[t], flip=flipped)
  return clip, flipped


CROPS = (1, 3, 5, 10)


def eval_boxes(image_w: int, image_h: int, crop: int, num_crops: int) -> list[tuple[Box, bool]]:
  """The crops of a test protocol, each with whether it is mirrored: 1 the centre, 3 along the
  long side, 5 the four corners and the centre (TSN's `GroupOverSample` without flips: the first
  five of its fixed offsets), 10 those five and their mirrors (`GroupOverSample`)."""
  if num_crops not in CROPS:
    raise ValueError(f'num_crops must be one of {CROPS}, got {num_crops}')
  if num_crops == 1:
    return [(centre_box(image_w, image_h, crop), False)]
  if num_crops == 3:
    return [(box, False) for box in three_crop_boxes(image_w, image_h, crop)]
  w, h = min(crop, image_w), min(crop, image_h)
  corners = [Box(x, y, w, h) for x, y in fixed_offsets(image_w, image_h, w, h)[:5]]
  return [(box, flip) for box in corners for flip in ((False, True) if num_crops == 10 else
                                                      (False,))]


def eval_clips(jpegs, num_frames: int, crop: int, *, test_scale: int, num_clips: int = 1,
               num_crops: int = 1) -> np.ndarray:
  """Evaluation views `[num_clips * num_crops, T, crop, crop, 3]` uint8 RGB: short side resized
  to `test_scale`, the crops of `eval_boxes`, segment centres (and starts). A full-resolution
  protocol passes `crop` = `test_scale`."""
  indices = sampling.eval_indices(len(jpegs), num_frames, num_clips)
  frames = {i: video_io.resize_short_side(f, test_scale)
            for i, f in decode_frames(jpegs, indices.ravel()).items()}
  height, width = next(iter(frames.values())).shape[:2]
  boxes = eval_boxes(width, height, crop, num_crops)
  views = np.empty((len(indices) * len(boxes), num_frames, crop, crop, 3), np.uint8)
  for v, (clip, (box, flip)) in enumerate((clip, box) for clip in indices for box in boxes):
    for t, i in enumerate(clip):
      crop_resize(frames[int(i)], box, crop, out=views[v, t], flip=flip)
  return views
