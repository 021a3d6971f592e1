"""Real SLURM (slurmctld, slurmd and munged from Debian's slurm-wlm and munge) on this machine,
for the cluster tests (`make test-cluster`). The daemons run as root, from a configuration of
their own in a temporary folder (its own munge key and socket, ports chosen free), so nothing
outside it is read or changed; they are stopped when the tests end."""
import os
import pathlib
import shutil
import socket
import subprocess
import time

import pytest

from runs import free_port

NEEDED = ('munged', 'slurmctld', 'slurmd', 'sbatch', 'scontrol', 'scancel', 'mpirun')


@pytest.fixture(scope='session')
def cluster_tools():
  """Fails (not skips) where the cluster tests cannot run: they are asked for by name."""
  missing = [tool for tool in NEEDED if not (shutil.which(tool) or
                                              os.path.exists(f'/usr/sbin/{tool}'))]
  if missing or os.geteuid() != 0:
    pytest.fail(f'the cluster tests need root and Debian\'s slurm-wlm, munge and openmpi-bin '
                f'(missing: {", ".join(missing) or "root"}); as root: apt-get install -y '
                f'slurm-wlm munge openmpi-bin, then make test-cluster', pytrace=False)


def _tool(name):
  return shutil.which(name) or f'/usr/sbin/{name}'


CONF = """ClusterName=cstmtest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={d}/munge.sock,cred_expire=5
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SchedulerType=sched/builtin
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
KillWait=10
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _pid(path: pathlib.Path):
  try:
    return int(path.read_text().split()[0])
  except (OSError, ValueError, IndexError):
    return None


@pytest.fixture(scope='session')
def slurm(cluster_tools, tmp_path_factory):
  """A one-node SLURM cluster on this machine; returns the environment its commands need."""
  d = tmp_path_factory.mktemp('slurm')
  for sub in ('state', 'spool'):
    (d / sub).mkdir()
  (d / 'munge.key').write_bytes(os.urandom(1024))
  (d / 'munge.key').chmod(0o600)
  host = socket.gethostname()
  (d / 'slurm.conf').write_text(CONF.format(host=host, d=d, ctld_port=free_port(),
                                            d_port=free_port(), cpus=os.cpu_count()))
  env = {**os.environ, 'SLURM_CONF': str(d / 'slurm.conf')}
  subprocess.run([_tool('munged'), '--force', f'--key-file={d}/munge.key',
                  f'--socket={d}/munge.sock', f'--pid-file={d}/munged.pid',
                  f'--log-file={d}/munged.log', f'--seed-file={d}/munge.seed'], check=True)
  subprocess.run([_tool('slurmctld'), '-i'], env=env, check=True)
  subprocess.run([_tool('slurmd')], env=env, check=True)
  try:
    deadline = time.monotonic() + 60
    state = ''
    while time.monotonic() < deadline:
      state = subprocess.run(['sinfo', '-h', '-o', '%T'], env=env, capture_output=True,
                             text=True).stdout.strip()
      if state == 'idle':
        break
      time.sleep(0.5)
    assert state == 'idle', (state, (d / 'slurmctld.log').read_text()[-2000:],
                             (d / 'slurmd.log').read_text()[-2000:])
    yield env
  finally:
    for name in ('slurmd', 'slurmctld', 'munged'):
      pid = _pid(d / f'{name}.pid')
      if pid:
        try:
          os.kill(pid, 15)
        except ProcessLookupError:
          pass
