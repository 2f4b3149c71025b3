"""The core of a sweep: the loop over runs (`loop`), one run's execution (`execute`) and where it runs
(`executors`, `kernels`), the checks before anything runs (`preflight`), the sweep lock (`lock`), warm
starts (`warm_start`), the refit of the best configuration (`refit`), reruns (`rerun`), ensembles
(`ensemble`) and predict (`predict`)."""
