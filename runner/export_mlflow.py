"""`python runner/export_mlflow.py ...`: the `nbsweep export-mlflow` command. An entry point only: nothing imports it."""
import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])  # the project, not runner/
from runner.cli import script_main
script_main("export-mlflow")
