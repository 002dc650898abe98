"""`python -m vlm_jax.convert SRC OUT`: see vlm_jax/convert/cli.py."""

import sys

from vlm_jax.convert.cli import main

sys.exit(main())
