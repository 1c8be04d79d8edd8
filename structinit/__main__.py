"""`python -m structinit`: the `structinit` command line."""
import sys

from structinit.cli import main

sys.exit(main())
