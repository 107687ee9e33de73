"""Diagnosis from volumes (``nnunet-peft classify``): a cross-validated scikit-learn classifier over a volumes
table joined with subject metadata.

Matching cases to subjects. The volumes table has one row per case (column ``case``, or
``--case-column``); the metadata one row per subject (column ``subject``, or ``--id-column``).
Ids are compared as text after trimming spaces (``001`` stays ``001``, it is not ``1``). Without
``--subject-pattern`` a case id is its subject id. With it, the pattern (a Python regular expression
that must match the whole case id) takes the subject from its group ``subject`` (or its first
group) and, if it has one, a part from its group ``part``:

- ``hippocampus_(\\d+)`` maps ``hippocampus_001`` to subject ``001``;
- ``(?P<subject>S\\d+)(?P<part>[LR])`` maps ``S05L`` and ``S05R`` (``convert --split-sides``) to
  subject ``S05`` with parts ``L`` and ``R``: every volume feature becomes one per part
  (``left_ml_L``, ``left_ml_R``, ...), so a subject is one sample with both sides.

Two cases of one subject without a part group are an error, not an average.

Excluded subjects are listed, never dropped silently: ``missing_metadata`` (cases whose subject has
no metadata row, or an empty target or covariate), ``missing_volumes`` (metadata subjects without
a case, or with an empty volume feature, e.g. a missing side) and ``excluded_other_class`` (a
target outside ``--classes``).

The classifier is a scikit-learn pipeline: numeric features standardised, categorical covariates
(any column whose values are not all numbers) one-hot encoded, then logistic regression (or a
random forest), evaluated by stratified k-fold cross-validation with shuffled, seeded folds. The
figures are computed once over the pooled out-of-fold predictions of all subjects; per-fold values
are reported beside them.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from nnunet_peft.atomic import staged_folder
from nnunet_peft.volumetry.volumes import CASE_COLUMN

MODELS = ("logistic", "random-forest")
ID_COLUMN = "subject"


@dataclass
class Cohort:
    """The subjects a classifier sees and the ones it cannot, with why."""

    features: pd.DataFrame  # index: subject id; volume features, then covariates
    target: pd.Series  # index: subject id; class names as text
    volume_features: list[str]
    covariates: list[str]
    categorical: list[str]  # the covariates that are one-hot encoded
    missing_metadata: list[str] = field(default_factory=list)
    missing_volumes: list[str] = field(default_factory=list)
    excluded_other_class: list[str] = field(default_factory=list)


def read_table(path: str | os.PathLike, what: str) -> pd.DataFrame:
    """A CSV as text, ids with their leading zeros, cells and column names trimmed; empty cells are NaN."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        frame = pd.read_csv(path, dtype=str, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {what} {path} as CSV: {e}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.apply(lambda column: column.str.strip()).replace("", np.nan)


def subjects_of(cases: Sequence[str], pattern: str | None = None) -> pd.DataFrame:
    """Columns ``case``, ``subject`` and ``part`` ('' without a part group) for each case id."""
    cases = [str(c) for c in cases]
    if pattern is None:
        return pd.DataFrame({"case": cases, "subject": cases, "part": ""})
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"--subject-pattern {pattern!r} is not a regular expression: {e}") from None
    if "subject" not in regex.groupindex and regex.groups == 0:
        raise ValueError(f"--subject-pattern {pattern!r} has no group; put the subject id in (...) or "
                         "(?P<subject>...), e.g. 'hippocampus_(\\d+)'")
    rows = []
    for case in cases:
        match = regex.fullmatch(case)
        if match is None:
            raise ValueError(f"case {case!r} does not match --subject-pattern {pattern!r} (the whole case id must "
                             "match); fix the pattern or remove the case from the volumes table")
        subject = match.group("subject") if "subject" in regex.groupindex else match.group(1)
        part = match.group("part") if "part" in regex.groupindex else ""
        if not subject:
            raise ValueError(f"--subject-pattern {pattern!r} gives case {case!r} an empty subject id")
        rows.append({"case": case, "subject": subject, "part": part or ""})
    return pd.DataFrame(rows, columns=["case", "subject", "part"])


def subject_volumes(volumes: pd.DataFrame, case_column: str = CASE_COLUMN, subject_pattern: str | None = None,
                    features: Sequence[str] | None = None, source: str = "the volumes table"
                    ) -> tuple[pd.DataFrame, list[str]]:
    """``(table indexed by subject, its feature columns)`` from a volumes table of cases.

    ``features`` default to every numeric column but the case id. Parts become column suffixes.
    """
    if case_column not in volumes.columns:
        raise ValueError(f"{source} has no column {case_column!r} (it has {', '.join(volumes.columns)}); name the "
                         "case id column with --case-column")
    cases = volumes[case_column]
    if cases.isna().any():
        raise ValueError(f"{source} has row(s) without a case id in column {case_column!r} "
                         f"(rows {', '.join(str(i + 2) for i in np.flatnonzero(cases.isna()))} of the file)")
    repeated = sorted(set(cases[cases.duplicated()]))
    if repeated:
        raise ValueError(f"{source} lists case(s) {', '.join(repeated)} more than once")
    if features:
        unknown = [f for f in features if f not in volumes.columns or f == case_column]
        if unknown:
            raise ValueError(f"{source} has no feature column(s) {', '.join(unknown)} (it has "
                             f"{', '.join(c for c in volumes.columns if c != case_column)})")
        features = list(features)
    else:
        features = [c for c in volumes.columns if c != case_column and _is_numeric(volumes[c])]
        if not features:
            raise ValueError(f"{source} has no numeric column besides {case_column!r}; expected volumes such as "
                             "nnunet-peft volumes writes")
    values = pd.DataFrame({f: _numbers(volumes[f], f, cases, source) for f in features})
    ids = subjects_of(cases.tolist(), subject_pattern)
    clash = ids[ids.duplicated(["subject", "part"], keep=False)]
    if not clash.empty:
        first = clash.groupby(["subject", "part"])["case"].apply(list).iloc[0]
        raise ValueError(f"cases {', '.join(first)} all map to subject {clash['subject'].iloc[0]!r}; give "
                         "--subject-pattern a (?P<part>...) group to keep them as separate features "
                         "(e.g. '(?P<subject>S\\d+)(?P<part>[LR])'), or one case per subject")
    values.index = pd.MultiIndex.from_frame(ids[["subject", "part"]])
    if (ids["part"] == "").all():
        table = values.droplevel("part")
    else:
        table = values.unstack("part")  # a subject without one of the parts gets NaN there: missing volumes
        table.columns = [f"{feature}_{part}" for feature, part in table.columns]
    table.index.name = "subject"
    return table, list(table.columns)


def build_cohort(volumes: pd.DataFrame, metadata: pd.DataFrame, target: str, id_column: str = ID_COLUMN,
                 covariates: Sequence[str] = (), classes: Sequence[str] | None = None,
                 source: str = "the metadata") -> Cohort:
    """Join ``subject_volumes``'s table with the metadata and sort subjects into used and excluded."""
    covariates = list(covariates)
    for column in (id_column, target, *covariates):
        if column not in metadata.columns:
            flag = "--id-column" if column == id_column else "--target" if column == target else "--covariates"
            raise ValueError(f"{source} has no column {column!r} (it has {', '.join(metadata.columns)}); check "
                             f"{flag}")
    if target in covariates:
        raise ValueError(f"--covariates lists the target {target!r}; a classifier told the answer learns nothing")
    clash = [c for c in covariates if c in volumes.columns]
    if clash:
        raise ValueError(f"covariate(s) {', '.join(clash)} are also columns of the volumes table; rename one")
    if metadata[id_column].isna().any():
        rows = np.flatnonzero(metadata[id_column].isna()) + 2
        raise ValueError(f"{source} has row(s) without a subject id in column {id_column!r} (rows "
                         f"{', '.join(map(str, rows))} of the file)")
    repeated = sorted(set(metadata.loc[metadata[id_column].duplicated(), id_column]))
    if repeated:
        raise ValueError(f"{source} lists subject(s) {', '.join(repeated)} more than once in column {id_column!r}")
    meta = metadata.set_index(id_column)[[target, *covariates]]
    present_classes = sorted(meta[target].dropna().unique())
    other_class: list[str] = []
    if classes is not None:
        unknown = [c for c in classes if c not in present_classes]
        if unknown:
            raise ValueError(f"--classes {', '.join(unknown)} never occur in column {target!r} of {source}; it "
                             f"holds {', '.join(present_classes)}")
        outside = meta[target].notna() & ~meta[target].isin(list(classes))
        other_class = _sorted_ids(meta.index[outside])
        meta = meta[~outside]
    subjects = _sorted_ids((set(volumes.index) | set(meta.index)) - set(other_class))
    meta_complete = meta.notna().all(axis=1)
    volumes_complete = volumes.notna().all(axis=1)
    missing_metadata = [s for s in subjects if s not in meta.index or not meta_complete[s]]
    missing_volumes = [s for s in subjects if s not in volumes.index or not volumes_complete[s]]
    excluded = set(missing_metadata) | set(missing_volumes)
    used = [s for s in subjects if s not in excluded]
    categorical = [c for c in covariates if not _is_numeric(meta.loc[used, c])]
    covariate_values = pd.DataFrame(
        {c: meta.loc[used, c] if c in categorical else pd.to_numeric(meta.loc[used, c]) for c in covariates},
        index=pd.Index(used, name="subject"))
    features = pd.concat([volumes.loc[used], covariate_values], axis=1)
    return Cohort(features, meta.loc[used, target].rename(target), list(volumes.columns), covariates, categorical,
                  missing_metadata, missing_volumes, other_class)


def make_pipeline(numeric: Sequence[str], categorical: Sequence[str], model: str = "logistic", seed: int = 0):
    """Standardise the numeric features, one-hot encode the categorical ones, then classify."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    prepare = ColumnTransformer([("scale", StandardScaler(), list(numeric)),
                                 # a category that only the held-out fold has is all-zero, not an error
                                 ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                                  list(categorical))],
                                verbose_feature_names_out=False)
    classifier = (LogisticRegression(max_iter=10_000) if model == "logistic"
                  else RandomForestClassifier(n_estimators=200, random_state=seed))
    return Pipeline([("prepare", prepare), ("classify", classifier)])


def cross_validate(cohort: Cohort, classes: Sequence[str] | None = None, folds: int = 5, seed: int = 0,
                   model: str = "logistic") -> dict:
    """Out-of-fold predictions and their figures; ``classes`` fixes the order (binary: the last is positive)."""
    from sklearn.base import clone
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    if folds < 2:
        raise ValueError(f"--folds must be at least 2, got {folds}")
    classes = list(classes) if classes is not None else sorted(cohort.target.unique())
    counts = {c: int((cohort.target == c).sum()) for c in classes}
    if sum(n > 0 for n in counts.values()) < 2:
        raise ValueError(f"{len(cohort.target)} usable subject(s) with target(s) {_counts(counts)}; a classifier "
                         "needs subjects of at least two classes (see the missing/excluded subjects listed)")
    few = {c: n for c, n in counts.items() if n < folds}
    if few:
        raise ValueError(f"{folds}-fold stratified cross-validation needs at least {folds} subjects per class; "
                         f"{_counts(few)} (of {_counts(counts)} usable); lower --folds (at least 2) or add subjects")
    numeric = [c for c in cohort.features.columns if c not in cohort.categorical]
    pipeline = make_pipeline(numeric, cohort.categorical, model, seed)
    X, y = cohort.features, cohort.target.map({c: i for i, c in enumerate(classes)}).to_numpy()
    proba, fold_of = np.zeros((len(y), len(classes))), np.zeros(len(y), dtype=int)
    per_fold = []
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (train, test) in enumerate(splitter.split(X, y)):
        fitted = clone(pipeline).fit(X.iloc[train], y[train])
        proba[np.ix_(test, fitted.classes_)] = fitted.predict_proba(X.iloc[test])
        fold_of[test] = fold
        per_fold.append({"fold": fold, "n": len(test),
                         "accuracy": float(accuracy_score(y[test], proba[test].argmax(1))),
                         "auc": _auc(roc_auc_score, y[test], proba[test], len(classes))})
    predicted = proba.argmax(1)
    final = clone(pipeline).fit(X, y)  # on every subject: the weights it gives the features
    return {
        "accuracy": float(accuracy_score(y, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(y, predicted)),
        "auc": _auc(roc_auc_score, y, proba, len(classes)),
        "auc_definition": (f"ROC AUC of the out-of-fold probability of {classes[1]!r} (positive class) against "
                           f"{classes[0]!r}" if len(classes) == 2 else
                           "macro average of one-vs-rest ROC AUCs of the out-of-fold probabilities"),
        "classes": classes,
        "positive_class": classes[1] if len(classes) == 2 else None,
        "class_counts": counts,
        "confusion_matrix": confusion_matrix(y, predicted, labels=list(range(len(classes)))).tolist(),
        "per_fold": per_fold,
        "encoded_features": [str(f) for f in final[:-1].get_feature_names_out()],
        "weights": _weights(final, classes),
        "_y": y, "_proba": proba, "_fold": fold_of,
    }


def classify(volumes_csv: str | os.PathLike, metadata_csv: str | os.PathLike, target: str, out: str | os.PathLike,
             id_column: str = ID_COLUMN, case_column: str = CASE_COLUMN, subject_pattern: str | None = None,
             covariates: Sequence[str] = (), features: Sequence[str] | None = None,
             classes: Sequence[str] | None = None, folds: int = 5, seed: int = 0, model: str = "logistic",
             overwrite: bool = False) -> dict:
    """Everything ``nnunet-peft classify`` does; returns what it writes to ``out/metrics.json``."""
    if classes is not None and len(set(classes)) != len(classes):
        raise ValueError(f"--classes lists a class twice: {' '.join(classes)}")
    if Path(out).exists() and not overwrite:  # before the work, not after it
        raise FileExistsError(f"{out} exists; choose another output folder or pass --overwrite")
    by_subject, volume_features = subject_volumes(read_table(volumes_csv, "volumes table"), case_column,
                                                  subject_pattern, features, source=str(volumes_csv))
    cohort = build_cohort(by_subject, read_table(metadata_csv, "metadata"), target, id_column, covariates,
                          classes, source=str(metadata_csv))
    result = cross_validate(cohort, classes, folds, seed, model)
    y, proba, fold_of = result.pop("_y"), result.pop("_proba"), result.pop("_fold")
    metrics = {
        "accuracy": result["accuracy"], "balanced_accuracy": result["balanced_accuracy"], "auc": result["auc"],
        **{k: v for k, v in result.items() if k not in ("accuracy", "balanced_accuracy", "auc", "weights")},
        "n_subjects": len(y), "target": target, "model": model, "folds": folds, "seed": seed,
        "features": [*volume_features, *cohort.covariates],
        "volume_features": volume_features, "covariates": cohort.covariates,
        "categorical_covariates": cohort.categorical,
        "missing_metadata": cohort.missing_metadata, "missing_volumes": cohort.missing_volumes,
        "excluded_other_class": cohort.excluded_other_class,
        "volumes": str(volumes_csv), "metadata": str(metadata_csv), "case_column": case_column,
        "id_column": id_column, "subject_pattern": subject_pattern,
    }
    classes = result["classes"]
    with staged_folder(out, overwrite) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        predictions = pd.DataFrame({"subject": cohort.features.index, target: cohort.target.to_numpy(),
                                    "predicted": [classes[i] for i in proba.argmax(1)], "fold": fold_of})
        for i, c in enumerate(classes):
            predictions[f"p_{c}"] = proba[:, i]
        predictions.to_csv(tmp / "predictions.csv", index=False, float_format="%.6g")
        pd.DataFrame(result["confusion_matrix"], index=pd.Index(classes, name="true \\ predicted"),
                     columns=classes).to_csv(tmp / "confusion_matrix.csv")
        pd.DataFrame(result["weights"]).to_csv(tmp / "feature_weights.csv", index=False, float_format="%.6g")
        excluded = [(s, r) for r, ids in (("missing_metadata", cohort.missing_metadata),
                                          ("missing_volumes", cohort.missing_volumes),
                                          ("excluded_other_class", cohort.excluded_other_class)) for s in ids]
        pd.DataFrame(excluded, columns=["subject", "reason"]).to_csv(tmp / "excluded_subjects.csv", index=False)
        _plot(tmp, y, proba, result["confusion_matrix"], classes, result["auc"])
    return metrics


def format_summary(metrics: dict, out: str | os.PathLike) -> str:
    """What ``classify`` prints."""
    classes = metrics["classes"]
    width = max(len(c) for c in classes) + 2
    lines = [f"{metrics['n_subjects']} subjects ({_counts(metrics['class_counts'])}), {metrics['model']}, "
             f"{metrics['folds']}-fold stratified cross-validation (seed {metrics['seed']})",
             f"ids: volumes' {metrics['case_column']!r} -> metadata's {metrics['id_column']!r}"
             + (f" through --subject-pattern {metrics['subject_pattern']!r}" if metrics["subject_pattern"] else ""),
             f"features: {', '.join(metrics['features'])}"
             + (f" (one-hot: {', '.join(metrics['categorical_covariates'])})"
                if metrics["categorical_covariates"] else ""),
             f"accuracy           {metrics['accuracy']:.3f}",
             f"balanced accuracy  {metrics['balanced_accuracy']:.3f}",
             f"AUC                {metrics['auc']:.3f}  ({metrics['auc_definition']})",
             "confusion matrix (rows: true, columns: predicted)",
             " " * width + "".join(f"{c:>{width}}" for c in classes)]
    lines += [f"{c:<{width}}" + "".join(f"{n:>{width}}" for n in row)
              for c, row in zip(classes, metrics["confusion_matrix"])]
    for key, what in (("missing_metadata", "no metadata (or an empty target/covariate)"),
                      ("missing_volumes", "no volumes (or an empty volume)"),
                      ("excluded_other_class", "a target outside --classes")):
        if metrics[key]:
            lines.append(f"left out, {what}: {len(metrics[key])}: {' '.join(metrics[key])}")
    lines.append(f"wrote {out}: metrics.json, predictions.csv, confusion_matrix.csv/.png, roc.png, "
                 "feature_weights.csv, excluded_subjects.csv")
    return "\n".join(lines)


def _is_numeric(column: pd.Series) -> bool:
    present = column.dropna()
    return not present.empty and pd.to_numeric(present, errors="coerce").notna().all()


def _numbers(column: pd.Series, name: str, cases: pd.Series, source: str) -> pd.Series:
    numbers = pd.to_numeric(column, errors="coerce")
    bad = column.notna() & numbers.isna()
    if bad.any():
        where = bad.to_numpy().nonzero()[0][0]
        raise ValueError(f"{source}: column {name!r} holds {column.iloc[where]!r} for case {cases.iloc[where]}; "
                         "feature columns must be numbers (leave a cell empty for a missing value)")
    return numbers.reset_index(drop=True)


def _auc(roc_auc_score, y: np.ndarray, proba: np.ndarray, n_classes: int) -> float | None:
    if len(np.unique(y)) < 2:  # a fold of one class (only with very small classes) has no AUC
        return None
    if n_classes == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    if len(np.unique(y)) < n_classes:
        return None
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=list(range(n_classes))))


def _weights(fitted, classes: list[str]) -> list[dict]:
    names = fitted[:-1].get_feature_names_out()
    classifier = fitted[-1]
    if hasattr(classifier, "coef_"):  # standardised features: comparable magnitudes
        rows = classifier.coef_
        labels = [f"coefficient_{classes[1]}"] if len(rows) == 1 else [f"coefficient_{c}" for c in classes]
        return [{"feature": str(n), **{label: float(row[j]) for label, row in zip(labels, rows)}}
                for j, n in enumerate(names)]
    return [{"feature": str(n), "importance": float(v)} for n, v in zip(names, classifier.feature_importances_)]


def _sorted_ids(ids) -> list[str]:
    return sorted(str(i) for i in ids)


def _counts(counts: dict) -> str:
    return ", ".join(f"{c}: {n}" for c, n in counts.items())


def _plot(folder: Path, y: np.ndarray, proba: np.ndarray, matrix: list[list[int]], classes: list[str],
          auc: float) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a server
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    fig, ax = plt.subplots(figsize=(5, 5))
    if len(classes) == 2:
        RocCurveDisplay.from_predictions(y, proba[:, 1], pos_label=1, name=f"{classes[1]} vs {classes[0]}", ax=ax)
    else:
        for i, c in enumerate(classes):
            RocCurveDisplay.from_predictions(y == i, proba[:, i], pos_label=True, name=f"{c} vs rest", ax=ax)
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="chance")
    negative, positive = (classes[0], classes[1]) if len(classes) == 2 else ("others", "the class")
    ax.set_xlabel(f"false positive rate ({negative} called {positive})")
    ax.set_ylabel(f"true positive rate ({positive} found)")
    ax.set_title(f"Out-of-fold ROC (AUC {auc:.3f})")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "roc.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4 + 0.4 * len(classes), 4 + 0.4 * len(classes)))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=classes).plot(ax=ax, colorbar=False, cmap="Blues")
    ax.set_title("Out-of-fold confusion matrix")
    fig.tight_layout()
    fig.savefig(folder / "confusion_matrix.png", dpi=120)
    plt.close(fig)
