"""Each process's GPUs and the job's size, from what SLURM, Open MPI and TPU slices set. (Jobs
under real SLURM and Open MPI: tests/cluster, `make test-cluster`.)"""
import pytest

from cstm_jax.distributed import launch

SLURM_8_GPUS = {'CUDA_VISIBLE_DEVICES': '0,1,2,3,4,5,6,7', 'SLURM_NTASKS': '16',
                'SLURM_NODEID': '1'}


@pytest.mark.parametrize('environ, gpus, expected', [
    # One process per node (--ntasks-per-node=1): all of its GPUs, not only GPU 0.
    ({**SLURM_8_GPUS, 'SLURM_LOCALID': '0', 'SLURM_STEP_TASKS_PER_NODE': '1(x2)'}, 8,
     list(range(8))),
    # One per GPU, --gpus-per-task=1: it sees one GPU, GPU 0 for it, whatever its local rank.
    ({'CUDA_VISIBLE_DEVICES': '5', 'SLURM_LOCALID': '5', 'SLURM_GPUS_PER_TASK': '1',
      'SLURM_STEP_TASKS_PER_NODE': '8(x2)', 'SLURM_NODEID': '1'}, 1, [0]),
    # One per GPU, all GPUs visible to every task: the GPU of its local rank.
    ({**SLURM_8_GPUS, 'SLURM_LOCALID': '5', 'SLURM_STEP_TASKS_PER_NODE': '8(x2)'}, 8, [5]),
    # Four per node, two GPUs each; uneven task counts per node are read at SLURM_NODEID.
    ({**SLURM_8_GPUS, 'SLURM_LOCALID': '1', 'SLURM_TASKS_PER_NODE': '2,4'}, 8, [2, 3]),
    # Open MPI, one rank per GPU.
    ({'OMPI_COMM_WORLD_LOCAL_RANK': '3', 'OMPI_COMM_WORLD_LOCAL_SIZE': '8'}, 8, [3]),
    # Not under SLURM or MPI (--coordinator_address, TPU), or no GPUs: jax's own choice.
    ({'CUDA_VISIBLE_DEVICES': '0,1'}, 2, None),
    ({'SLURM_LOCALID': '0', 'SLURM_STEP_TASKS_PER_NODE': '1(x2)'}, 0, None),
])
def test_each_process_gets_its_gpus(environ, gpus, expected):
  assert launch.visible_gpus(environ) == gpus or 'CUDA_VISIBLE_DEVICES' not in environ
  assert launch.local_device_ids(environ, gpus) == expected


def test_cluster_size_from_the_environment():
  assert launch.cluster_processes({}) == 1
  assert launch.cluster_processes({'SLURM_NTASKS': '16'}) == 16
  assert launch.cluster_processes({'OMPI_COMM_WORLD_SIZE': '4'}) == 4
  assert launch.cluster_processes({'TPU_WORKER_HOSTNAMES': 'w0,w1,w2,w3'}) == 4
