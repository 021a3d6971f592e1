"""Clip transforms: decode the sampled frames, crop, resize, flip, normalise (docs/design.md,
"Data").

A box is `(x, y, w, h)` in pixels of the decoded frame. Clips are `[T, H, W, 3]`.
"""
import cv2
import numpy as np

from input_pipeline import sampling, video_io
from input_pipeline.conventions import NORMALISATION, TSN_SCALES


def fixed_offsets(image_w: int, image_h: int, crop_w: int, crop_h: int) -> list[tuple[int, int]]:
  """TSN's 13 crop positions: corners, centre, edge midpoints and the four quarter points."""
  w, h = (image_w - crop_w) // 4, (image_h - crop_h) // 4
  grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0),
          (1, 1), (3, 1), (1, 3), (3, 3)]
  return [(i * w, j * h) for i, j in grid]


def multiscale_crop_box(image_w: int, image_h: int, crop_size: int, rng: np.random.Generator,
                        scales=TSN_SCALES, max_distort: int = 1) -> tuple[int, int, int, int]:
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
  return x, y, crop_w, crop_h


def centre_box(image_w: int, image_h: int, crop: int) -> tuple[int, int, int, int]:
  crop_w, crop_h = min(crop, image_w), min(crop, image_h)
  return (image_w - crop_w) // 2, (image_h - crop_h) // 2, crop_w, crop_h


def three_crop_boxes(image_w: int, image_h: int, crop: int) -> list[tuple[int, int, int, int]]:
  """Three crops along the long side (left/top, centre, right/bottom), centred on the other."""
  x, y, w, h = centre_box(image_w, image_h, crop)
  if image_w >= image_h:
    return [(0, y, w, h), (x, y, w, h), (image_w - w, y, w, h)]
  return [(x, 0, w, h), (x, y, w, h), (x, image_h - h, w, h)]


def decode_frames(jpegs, indices) -> dict[int, np.ndarray]:
  """Decodes only the frames at `indices` (each distinct frame once)."""
  return {int(i): video_io.decode_jpeg(jpegs[int(i)], f'frame {int(i)}') for i in set(indices)}


def crop_resize(frame: np.ndarray, box, size: int) -> np.ndarray:
  x, y, w, h = box
  patch = frame[y:y + h, x:x + w]
  if patch.shape[:2] == (size, size):
    return patch
  return cv2.resize(patch, (size, size), interpolation=cv2.INTER_LINEAR)


def normalise(clip: np.ndarray, colour: str, dtype=np.float32) -> np.ndarray:
  """uint8 RGB `[..., H, W, 3]` -> the backbone's input convention (BGR 0-255 minus mean for
  the Caffe Inception nets, RGB ImageNet mean/std for the torchvision ones)."""
  mean, std = NORMALISATION[colour]
  if colour == 'bgr255':  # swap channels while still uint8: a quarter of the bytes
    shape = clip.shape
    clip = cv2.cvtColor(clip.reshape(-1, shape[-2], 3), cv2.COLOR_RGB2BGR).reshape(shape)
  x = clip.astype(np.float32)
  x -= mean
  if np.any(std != 1):
    x *= 1 / std
  return x if dtype == np.float32 else x.astype(dtype)


def train_clip(jpegs, num_frames: int, crop: int, rng: np.random.Generator,
               flip: bool = False, scales=TSN_SCALES) -> tuple[np.ndarray, bool]:
  """A training clip `[T, crop, crop, 3]` uint8 RGB and whether it was flipped: TSN segment
  sampling, one multi-scale crop for every frame, a horizontal flip with probability 1/2."""
  indices = sampling.train_indices(len(jpegs), num_frames, rng)
  frames = decode_frames(jpegs, indices)
  height, width = next(iter(frames.values())).shape[:2]
  box = multiscale_crop_box(width, height, crop, rng, scales)
  clip = np.stack([crop_resize(frames[int(i)], box, crop) for i in indices])
  flipped = bool(flip and rng.random() < 0.5)
  return (np.ascontiguousarray(clip[:, :, ::-1]) if flipped else clip), flipped


def eval_clips(jpegs, num_frames: int, crop: int, test_scale: int, num_clips: int = 1,
               num_crops: int = 1) -> np.ndarray:
  """Evaluation views `[num_clips * num_crops, T, crop, crop, 3]` uint8 RGB: short side resized
  to `test_scale`, centre crop (or three crops), segment centres (and starts)."""
  if num_crops not in (1, 3):
    raise ValueError(f'num_crops must be 1 or 3, got {num_crops}')
  indices = sampling.eval_indices(len(jpegs), num_frames, num_clips)
  frames = {i: video_io.resize_short_side(f, test_scale)
            for i, f in decode_frames(jpegs, indices.ravel()).items()}
  height, width = next(iter(frames.values())).shape[:2]
  boxes = three_crop_boxes(width, height, crop) if num_crops == 3 else [
      centre_box(width, height, crop)]
  return np.stack([np.stack([crop_resize(frames[int(i)], box, crop) for i in clip])
                   for clip in indices for box in boxes])
