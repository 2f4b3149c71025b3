"""`python runner/leaderboard.py ...`: the `nbsweep leaderboard` command. An entry point only: nothing imports it."""
import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])  # the project, not runner/
if __name__ == "__main__":  # `--workers N` spawns processes that run this file again as `__mp_main__`
    from runner.cli import script_main
    script_main("leaderboard")
