"""`python -m mura_core SUBCOMMAND ...`."""
import sys

from mura_core.commands import main

sys.exit(main())
