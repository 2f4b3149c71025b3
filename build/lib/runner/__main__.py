"""`python -m runner ...`: the `nbsweep` command line. An entry point only: nothing imports it."""
import sys

if __name__ == "__main__":  # `--workers N` spawns processes that run this file again as `__mp_main__`
    from runner.cli import main

    sys.exit(main())
