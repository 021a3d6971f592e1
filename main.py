"""`python main.py --config=configs/ssv2_16f.py --workdir=DIR`: trains and evaluates.

The same as the installed `cstm-train` command; cstm_jax/main.py says more, and
`python main.py --helpfull` lists every flag.
"""
from cstm_jax.main import cli

if __name__ == '__main__':
  cli()
