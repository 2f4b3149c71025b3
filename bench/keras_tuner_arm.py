"""The search benchmark's fourth arm: Keras Tuner's Hyperband on the same space, in one process.

    python bench/keras_tuner_arm.py --work DIR --space JSON --fixed JSON

Run by `bench/search_bench.py` (as a child process it stops with SIGTERM when
the arm's budget is spent), only where `keras_tuner` imports; it is not a
project requirement (`pip install keras-tuner==1.4.8`).

`keras_tuner.Hyperband` (Li et al. 2018, as Keras Tuner implements it:
`max_epochs` = head + fine-tuning epochs, 8 with the bench's defaults, `factor` 3)
proposes the points and their epoch budgets;
each trial trains with the project's own code (`models.build_model`,
`models.train_model` with its activation cache, `models.evaluate_model`),
from scratch at each budget (Hyperband as published; Keras Tuner's
continuation from the parent trial's weights needs its own `fit` callbacks,
which `train_model` does not take). A trial's `tuner/epochs` `E` is its head
epochs, `min(E, epochs)`, plus, for a fine-tuned point, `E - epochs`
fine-tuning epochs (at most `fine_tune_epochs`). So the arm differs from the
others in its search and in having no notebook per run (no kernel start, no
record, no export). Its activation cache is `$NBSWEEP_CACHE_DIR` (the
caller sets it inside the arm's folder). Each finished trial appends a line to
`<work>/trials.jsonl`: `finished` (epoch seconds), `val`, `test` (weighted
recall), `epochs`, `params`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="the arm's folder (created if missing)")
    parser.add_argument("--space", required=True, help="JSON: parameter -> list of values")
    parser.add_argument("--fixed", required=True, help="JSON: the parameters every run shares")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    space, fixed, work = json.loads(args.space), json.loads(args.fixed), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    import keras
    import keras_tuner

    import models

    head_epochs, ft_epochs = fixed["epochs"], fixed.get("fine_tune_epochs", 0)
    hp = keras_tuner.HyperParameters()
    for name, values in space.items():  # Choice takes scalars: every value as its JSON text
        hp.Choice(name, [json.dumps(v) for v in values])
    log = (work / "trials.jsonl").open("a", encoding="utf-8")

    class Arm(keras_tuner.Hyperband):
        def run_trial(self, trial, *_, **__):
            point = {name: json.loads(trial.hyperparameters.get(name)) for name in space}
            budget = int(trial.hyperparameters.get("tuner/epochs"))
            params = {**fixed, **point, "epochs": min(budget, head_epochs),
                      "fine_tune_epochs": min(ft_epochs, max(0, budget - head_epochs))}
            if not (params["fine_tune_layers"] and params["fine_tune_epochs"]):
                params["fine_tune_layers"], params["fine_tune_epochs"] = 0, 0
            spec = models.ExperimentSpec(**params)
            keras.backend.clear_session()
            out = work / "trials" / trial.trial_id
            out.mkdir(parents=True, exist_ok=True)
            data = models.load_data(spec)
            model = models.build_model(spec, num_classes=len(data.class_names))
            training = models.train_model(model, data, spec, out, verbose=0)
            evaluation = models.evaluate_model(model, data, spec, out)
            val, test = evaluation.val_metrics["weighted_recall"], evaluation.metrics["weighted_recall"]
            log.write(json.dumps({"finished": time.time(), "val": val, "test": test, "epochs": training.epochs_run,
                                  "budget_epochs": budget, "params": point}) + "\n")
            log.flush()
            return {"val_weighted_recall": val}

    tuner = Arm(hypermodel=None, objective=keras_tuner.Objective("val_weighted_recall", "max"),
                max_epochs=head_epochs + ft_epochs, factor=3, hyperband_iterations=1000, seed=args.seed,
                hyperparameters=hp, tune_new_entries=False, directory=str(work), project_name="keras_tuner",
                overwrite=True)
    tuner.search()
    return 0


if __name__ == "__main__":
    sys.exit(main())
