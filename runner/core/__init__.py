"""The core of a sweep: the loop over runs (`loop`), one run's execution (`execute`) and where it runs
(`executors`, `kernels`), the checks before anything runs (`preflight`), warm starts (`warm_start`),
reruns (`rerun`), ensembles (`ensemble`), predict (`predict`) and the MLflow export (`export_mlflow`)."""
