"""TSN segment sampling: which frames of a video make a clip of T frames.

The video's n frames are split into T equal segments (segment i covers [i n / T, (i+1) n / T)).
Training takes a random frame in each segment, evaluation the segment's centre, and the second
test clip the segment's start. A video shorter than T repeats frames, in order.
"""
import numpy as np


def _bounds(num_frames: int, num_segments: int) -> tuple[np.ndarray, np.ndarray]:
  """First frame of each segment and one past its last (at least one frame each)."""
  if num_frames < 1:
    raise ValueError('a video needs at least one frame')
  edges = np.arange(num_segments + 1) * num_frames / num_segments
  starts = np.floor(edges[:-1]).astype(np.int64)
  stops = np.maximum(starts + 1, np.floor(edges[1:]).astype(np.int64))
  return starts, np.minimum(stops, num_frames)


def train_indices(num_frames: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
  """A random frame from each segment: `[T]` int64, non-decreasing."""
  starts, stops = _bounds(num_frames, num_segments)
  return rng.integers(starts, stops)


def centre_indices(num_frames: int, num_segments: int) -> np.ndarray:
  """The centre frame of each segment (TSN's evaluation clip)."""
  tick = num_frames / num_segments
  return np.minimum((tick / 2 + tick * np.arange(num_segments)).astype(np.int64), num_frames - 1)


def start_indices(num_frames: int, num_segments: int) -> np.ndarray:
  """The first frame of each segment (the second clip of the 2-clip test)."""
  return _bounds(num_frames, num_segments)[0]


def eval_indices(num_frames: int, num_segments: int, num_clips: int = 1) -> np.ndarray:
  """`[num_clips, T]`: centres, then (for 2 clips) starts."""
  if num_clips not in (1, 2):
    raise ValueError(f'num_clips must be 1 or 2, got {num_clips}')
  clips = [centre_indices(num_frames, num_segments), start_indices(num_frames, num_segments)]
  return np.stack(clips[:num_clips])
