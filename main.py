"""`python main.py --config=configs/ssv2_16f.py --workdir=DIR`: trains and evaluates.

The same as the installed `cstm-train` command; cstm_jax/main.py says more, and
`python main.py --helpfull` lists every flag.
"""
from cstm_foundation import stopping

if __name__ == '__main__':
  stopping.install(at_safe_points=True)  # first: a stop during the imports below is one too
  from cstm_jax.main import cli
  cli()
