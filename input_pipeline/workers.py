"""How many loader processes a host runs by default (`data.num_workers = -1`).

An accelerator trains clips several times faster than one loader process decodes and crops
them (docs/benchmarks.md, "Input pipeline" and "Input wait", has the current figures of both),
so the rule gives each local accelerator `PER_ACCELERATOR` = 8 processes, with headroom for
slower cores and longer videos. The rule:

    workers = min(8 x local accelerators,        # what the accelerators consume
                  usable cores - 1,              # one core drives the devices
                  a quarter of the host's memory / (prefetch x local batch bytes))

On a host with no accelerator (the CPU trains) the first term is cores // 2: the other half of
the cores compute the steps. `usable cores` counts the cores this process may run on (a SLURM
task's binding), and the per-accelerator cap keeps one process per GPU on an unbound 8-GPU node
at 8 workers each. A run whose log shows a high input wait needs more: set
`--config.data.num_workers`.
"""
import os

PER_ACCELERATOR = 8
MEMORY_SHARE = 0.25  # of the host's memory, for the batches the workers hold ready


def usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1


def host_memory_bytes() -> int:
  try:
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    return 0


def default_workers(*, cores: int, accelerators: int, local_batch_bytes: int, prefetch: int,
                    memory_bytes: int) -> int:
  """The rule above, for a host with `cores` usable cores, `accelerators` local accelerators and
  `memory_bytes` of memory, loading batches of `local_batch_bytes` with `prefetch` batches
  buffered per worker."""
  want = PER_ACCELERATOR * accelerators if accelerators else cores // 2
  limits = [want, max(cores - 1, 0)]
  if memory_bytes > 0:
    limits.append(int(MEMORY_SHARE * memory_bytes // max(1, prefetch * local_batch_bytes)))
  return max(0, min(limits))


def resolved(data_config, accelerators: int, process_count: int = 1) -> int:
  """`data_config.num_workers`, or the rule's count for this host when it is negative."""
  if data_config.num_workers >= 0:
    return int(data_config.num_workers)
  local_batch = max(1, data_config.batch_size // max(1, process_count))
  batch_bytes = local_batch * data_config.num_frames * data_config.crop ** 2 * 3
  return default_workers(cores=usable_cores(), accelerators=accelerators,
                         local_batch_bytes=batch_bytes, prefetch=max(1, data_config.prefetch),
                         memory_bytes=host_memory_bytes())
