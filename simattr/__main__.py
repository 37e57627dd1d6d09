"""`python -m simattr ...`: the command line (simattr.cli)."""
import sys

from .cli import main

sys.exit(main())
