"""Is the difference real? Significance tests between two runs, or two groups of repeats.

- `mcnemar_exact`: two single runs, on the **test split's predictions** (paired: the same
  images). McNemar's test as Dietterich (1998, "Approximate statistical tests for
  comparing supervised classification learning algorithms") recommends it, in its exact
  form: of the images exactly one of the two runs classifies correctly (the discordant
  pairs), how many each run gets; under the null hypothesis (both runs equally accurate)
  that split is Binomial(n01 + n10, 1/2), tested two-sided with `scipy.stats.binomtest`.
- `welch_t`: two groups of repeats (one configuration, several seeds each), on one
  metric's values: Welch's t-test (`scipy.stats.ttest_ind(equal_var=False)`), which does
  not assume equal variances.

`paired_test_predictions` reads two runs' `predictions.csv` and aligns their rows by
image, refusing runs that were not tested on the same split (their `data.manifest_hash`
differs). Nothing here imports TensorFlow; every distribution is scipy's.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from models.names import DEFAULT_METRIC
from runner.errors import ConfigError
from runner.records import RunRecord

P_VALUE_MEANING = (
    "The p-value is the probability of seeing a difference at least this large if the two runs "
    "(or configurations) were in truth equally good; a small p-value (below 0.05, say) means chance "
    "alone is an unlikely explanation, a large one does not prove them equal (the test split may be "
    "too small to tell).")
"""The one sentence the pages print beside a p-value."""


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's exact test between runs A and B on the same images.

    Attributes:
        n: images compared.
        only_a: images A classifies correctly and B does not (n10).
        only_b: images B classifies correctly and A does not (n01).
        both, neither: images both (neither) classify correctly.
        p_value: two-sided exact p-value; 1.0 when there is no discordant pair.
    """

    n: int
    only_a: int
    only_b: int
    both: int
    neither: int
    p_value: float

    @property
    def discordant(self) -> int:
        """Images exactly one of the runs classifies correctly."""
        return self.only_a + self.only_b


def mcnemar_exact(y_true: Sequence, pred_a: Sequence, pred_b: Sequence) -> McNemarResult:
    """McNemar's exact (binomial) test of two classifiers' predictions on the same examples.

    Args:
        y_true: the true labels, one per example.
        pred_a, pred_b: each classifier's predicted labels, in the same order.

    Returns:
        A `McNemarResult`; its `p_value` is `scipy.stats.binomtest(only_a,
        only_a + only_b, 0.5, alternative="two-sided").pvalue` (1.0 with no
        discordant pair).

    Raises:
        ValueError: the three sequences differ in length, or are empty.
    """
    from scipy.stats import binomtest

    y, a, b = (np.asarray(v, dtype=object) for v in (y_true, pred_a, pred_b))
    if not (len(y) == len(a) == len(b)) or len(y) == 0:
        raise ValueError(f"McNemar's test needs the same, non-zero number of labels and predictions "
                         f"(got {len(y)}, {len(a)}, {len(b)})")
    right_a, right_b = a == y, b == y
    only_a, only_b = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    both, neither = int(np.sum(right_a & right_b)), int(np.sum(~right_a & ~right_b))
    discordant = only_a + only_b
    p_value = 1.0 if discordant == 0 else float(binomtest(only_a, discordant, 0.5, alternative="two-sided").pvalue)
    return McNemarResult(n=len(y), only_a=only_a, only_b=only_b, both=both, neither=neither, p_value=p_value)


@dataclass(frozen=True)
class WelchResult:
    """Welch's t-test between two groups of values (e.g. one metric over each configuration's repeats).

    Attributes:
        n_a, n_b: group sizes.
        mean_a, mean_b: group means.
        std_a, std_b: sample standard deviations (ddof=1).
        t: the t statistic (A minus B).
        df: Welch-Satterthwaite degrees of freedom.
        p_value: two-sided p-value.
    """

    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    std_a: float
    std_b: float
    t: float
    df: float
    p_value: float


def welch_t(values_a: Sequence[float], values_b: Sequence[float]) -> WelchResult:
    """Welch's two-sided t-test: `scipy.stats.ttest_ind(values_a, values_b, equal_var=False)`'s figures.

    t = (mean_a - mean_b) / sqrt(var_a / n_a + var_b / n_b), df by Welch-Satterthwaite, p = 2 * P(T_df < -|t|)
    (`scipy.special.stdtr`, the tail `ttest_ind` uses).

    Args:
        values_a, values_b: each group's values (at least 2 each).

    Returns:
        A `WelchResult`. When both groups have zero variance the statistic is
        undefined: scipy's `nan` is kept for `t` and `p_value`.

    Raises:
        ValueError: a group has fewer than 2 values.
    """
    a, b = np.asarray(values_a, dtype=float), np.asarray(values_b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's t-test needs at least 2 values per group (got {len(a)} and {len(b)}): "
                         f"run each configuration with repeats: 3 or more")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb > 0:  # ttest_ind's own formulas, with its t distribution's tail (`scipy.special.stdtr`), without
        # importing scipy.stats (about a second: half of a leaderboard of 10,000 runs)
        from scipy.special import stdtr

        t = (a.mean() - b.mean()) / np.sqrt(va + vb)
        df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
        p_value = 2 * stdtr(df, -abs(t))
    else:  # no spread in either group: scipy's own handling of the undefined statistic
        from scipy.stats import ttest_ind

        result = ttest_ind(a, b, equal_var=False)
        t, df, p_value = result.statistic, result.df, result.pvalue
    return WelchResult(n_a=len(a), n_b=len(b), mean_a=float(a.mean()), mean_b=float(b.mean()),
                       std_a=float(a.std(ddof=1)), std_b=float(b.std(ddof=1)), t=float(t),
                       df=float(df), p_value=float(p_value))


def read_predictions(record: RunRecord, logs_dir: str | os.PathLike, key: str = "predictions"):
    """A run's saved predictions (`predictions.csv`: the test split), indexed by image path.

    Args:
        record: the run (or ensemble) record.
        logs_dir: the record's folder.
        key: `"predictions"` (test split) or `"val_predictions"`. Defaults to `"predictions"`.

    Returns:
        A `pandas.DataFrame` indexed by `path`, with `true_label`,
        `predicted_label` and the `prob_<class>` columns.

    Raises:
        ConfigError: the record lists no such file, or it is missing or unreadable.
    """
    import pandas as pd

    path = record.path_of(key, logs_dir)
    if path is None or not path.is_file():
        raise ConfigError(f"run {record.run_id}: no {key}.csv (its record lists {path or 'none'}); "
                          f"the run did not complete, or its folder was moved")
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"run {record.run_id}: cannot read {path}: {exc}") from exc
    missing = [c for c in ("path", "true_label") if c not in frame.columns]
    if missing:
        raise ConfigError(f"run {record.run_id}: {path} has no column {', '.join(missing)}")
    return frame.set_index("path")


def _predicted(frame, class_names: Sequence[str]) -> np.ndarray:
    if "predicted_label" in frame.columns:
        return frame["predicted_label"].astype(str).to_numpy()
    probabilities = frame[[f"prob_{c}" for c in class_names]].to_numpy()
    return np.asarray(class_names, dtype=object)[probabilities.argmax(axis=1)].astype(str)


def check_same_test_split(a: RunRecord, b: RunRecord) -> None:
    """Refuse two runs that were not tested on the same images with the same classes.

    Raises:
        ConfigError: a run has no data section, or their `data.manifest_hash`
            or `data.class_names` differ; the message says why a paired test
            needs them equal.
    """
    for rec in (a, b):
        if rec.data is None:
            raise ConfigError(f"run {rec.run_id} records no data (status {rec.status!r}): "
                              f"it has no test predictions to compare")
    if a.data.manifest_hash != b.data.manifest_hash:
        raise ConfigError(f"runs {a.run_id} and {b.run_id} were tested on different splits (data.manifest_hash "
                          f"{a.data.manifest_hash[:12]} vs {b.data.manifest_hash[:12]}): McNemar's test pairs the "
                          f"two runs' answers image by image, so both must be tested on the same test split "
                          f"(same data_dir, seed, val_fraction, test_fraction and max_images_per_class)")
    if list(a.data.class_names) != list(b.data.class_names):
        raise ConfigError(f"runs {a.run_id} and {b.run_id} have different classes "
                          f"({a.data.class_names} vs {b.data.class_names})")


def paired_test_predictions(a: RunRecord, b: RunRecord, logs_dir: str | os.PathLike,
                            logs_dir_b: Optional[str | os.PathLike] = None):
    """Both runs' test predictions aligned image by image: `(true labels, predicted A, predicted B)`.

    Args:
        a, b: completed run records with the same test split (`check_same_test_split`).
        logs_dir: the folder of `a`'s record (and of `b`'s, unless `logs_dir_b`).
        logs_dir_b: the folder of `b`'s record. Defaults to `logs_dir`.

    Returns:
        Three string arrays in A's row order.

    Raises:
        ConfigError: different test splits or classes, a predictions file
            missing, or the two files list other images or other true labels.
    """
    check_same_test_split(a, b)
    fa = read_predictions(a, logs_dir)
    fb = read_predictions(b, logs_dir if logs_dir_b is None else logs_dir_b)
    if set(fa.index) != set(fb.index) or len(fa) != len(fb):
        raise ConfigError(f"runs {a.run_id} and {b.run_id}: their predictions.csv list other images "
                          f"({len(fa)} vs {len(fb)} rows) although their manifests match")
    fb = fb.loc[fa.index]
    if not (fa["true_label"].astype(str).to_numpy() == fb["true_label"].astype(str).to_numpy()).all():
        raise ConfigError(f"runs {a.run_id} and {b.run_id}: the same image has different true labels")
    names = list(a.data.class_names)
    return fa["true_label"].astype(str).to_numpy(), _predicted(fa, names), _predicted(fb, names)


def mcnemar_runs(a: RunRecord, b: RunRecord, logs_dir: str | os.PathLike,
                 logs_dir_b: Optional[str | os.PathLike] = None) -> McNemarResult:
    """McNemar's exact test of two recorded runs on their test split's saved predictions.

    Args:
        a, b: the runs (A is the reference: `only_a` counts images only A gets right).
        logs_dir: the folder of `a`'s record (and `b`'s, unless `logs_dir_b`).
        logs_dir_b: the folder of `b`'s record. Defaults to `logs_dir`.

    Returns:
        The `McNemarResult`.

    Raises:
        ConfigError: see `paired_test_predictions`.
    """
    return mcnemar_exact(*paired_test_predictions(a, b, logs_dir, logs_dir_b))


def welch_groups(group_a: Sequence[RunRecord], group_b: Sequence[RunRecord], metric: str = DEFAULT_METRIC,
                 split: str = "test") -> WelchResult:
    """Welch's t-test between two groups of repeats on one metric of one split.

    Args:
        group_a, group_b: each configuration's repeat runs (completed).
        metric: a `RANKING_METRICS` name. Defaults to `models.names.DEFAULT_METRIC`.
        split: `"test"` (the record's `metrics`, the default) or `"val"` (`val_metrics`).

    Returns:
        The `WelchResult` of the groups' values.

    Raises:
        ValueError: a group has fewer than 2 runs with that figure.
    """
    def values(group: Sequence[RunRecord]) -> list[float]:
        sections = [rec.metrics if split == "test" else rec.val_metrics for rec in group]
        return [getattr(section, metric) for section in sections if section is not None]

    return welch_t(values(group_a), values(group_b))


def top_two(first: Sequence[RunRecord], second: Sequence[RunRecord], metric: str,
            logs_dir: str | os.PathLike) -> dict:
    """Is the first row of a ranking really better than the second? The test that fits, on the test split.

    Two groups of repeats (2 runs or more each): Welch's t-test of their test
    figures of `metric`. Otherwise McNemar's exact test of the two rows' best
    runs (the runs shown) on their test predictions.

    Args:
        first, second: the runs of the first and second row (a single run is a row of one).
        metric: a `RANKING_METRICS` name (Welch compares `test_<metric>`).
        logs_dir: the records' folder.

    Returns:
        `{"test": "Welch" | "McNemar", "a", "b" (the runs or rows named), "p"
        (or `None`), "detail" (the counts or means), "error" (why no test, or `None`)}`.
    """
    a, b = first[0], second[0]
    if len(first) > 1 and len(second) > 1:
        out = {"test": "Welch's t-test", "a": a.run_id, "b": b.run_id, "p": None, "detail": "", "error": None}
        try:
            result = welch_groups(first, second, metric, "test")
        except ValueError as exc:
            return {**out, "error": str(exc)}
        return {**out, "p": result.p_value,
                "detail": f"test_{metric} {result.mean_a:.4f} ± {result.std_a:.4f} (n = {result.n_a}) vs "
                          f"{result.mean_b:.4f} ± {result.std_b:.4f} (n = {result.n_b})"}
    out = {"test": "McNemar's exact test", "a": a.run_id, "b": b.run_id, "p": None, "detail": "", "error": None}
    try:
        result = mcnemar_runs(a, b, logs_dir)
    except ConfigError as exc:
        return {**out, "error": str(exc)}
    return {**out, "p": result.p_value,
            "detail": f"{result.only_a} test image(s) only {a.run_id} got right, {result.only_b} only {b.run_id}, "
                      f"of {result.n}"}


def format_p(p: Optional[float]) -> str:
    """A p-value for a page or a terminal: 4 significant digits, `<1e-6` below that, `n/a` for none or nan."""
    if p is None or math.isnan(p):
        return "n/a"
    return "<1e-6" if p < 1e-6 else f"{p:.4g}"


def describe(result: McNemarResult, a: str = "A", b: str = "B") -> str:
    """One line: `McNemar exact: 12 images only A got right, 5 only B, p = 0.1435 (n = 300)`."""
    return (f"McNemar exact: {result.only_a} image(s) only {a} got right, {result.only_b} only {b}, "
            f"p = {format_p(result.p_value)} (n = {result.n})")


__all__ = ["McNemarResult", "P_VALUE_MEANING", "WelchResult", "check_same_test_split", "describe", "format_p",
           "mcnemar_exact", "mcnemar_runs", "paired_test_predictions", "read_predictions", "top_two",
           "welch_groups", "welch_t"]
