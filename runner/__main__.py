"""`python -m runner ...`: the `nbsweep` command line. An entry point only: nothing imports it."""
import sys
from runner.cli import main
sys.exit(main())
