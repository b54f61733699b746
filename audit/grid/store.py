"""The result store of a run directory: SQLite (schema-versioned) plus a poison cache.

Each finished cell is committed in its own transaction, so a run killed at any moment
(Ctrl-C, ``kill -9``) keeps every cell it finished and nothing half-written: SQLite's
journal rolls back an interrupted write, and cached poisons are written to a temporary
file and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
import time
import zipfile
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from audit.attacks.base import SourcedDiagnostics
from audit.errors import AuditError
from audit.jsonio import D
from audit.models.candidate import candidate_key
from audit.paths import own_dir, refuse_link
from audit.seeding import derive_seed

__all__ = ["STORE_FILE", "Store", "candidate_key", "PolicyRow", "cell_key", "derive_seed"]

STORE_SCHEMA_VERSION = 2  # 2: every per-model table has a ``split`` column (repeated splits); 1 is read and migrated
STORE_FILE = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clean (
    candidate TEXT NOT NULL, seed INTEGER NOT NULL,
    val_metric REAL, test_metric REAL, seconds REAL, train TEXT, split INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (candidate, split, seed)
);
CREATE TABLE IF NOT EXISTS clean_defended (
    candidate TEXT NOT NULL, seed INTEGER NOT NULL, defense TEXT NOT NULL,
    val_metric REAL, test_metric REAL, clean_removed INTEGER, error TEXT, split INTEGER NOT NULL DEFAULT 0,
    diagnostics TEXT,
    PRIMARY KEY (candidate, split, seed, defense)
);
CREATE TABLE IF NOT EXISTS targets (
    candidate TEXT NOT NULL, seed INTEGER NOT NULL, eps_w REAL NOT NULL,
    val_metric REAL, test_metric REAL, threshold TEXT, gradpc TEXT, split INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (candidate, split, seed, eps_w)
);
CREATE TABLE IF NOT EXISTS policies (
    base TEXT NOT NULL, policy TEXT NOT NULL, budget REAL NOT NULL, seed INTEGER NOT NULL,
    lam REAL, l2 REAL, norm_w2 REAL, val_metric REAL, test_metric REAL, seconds REAL, diagnostics TEXT,
    PRIMARY KEY (base, policy, budget, seed)
);
CREATE TABLE IF NOT EXISTS cells (
    cell_key TEXT PRIMARY KEY, position INTEGER NOT NULL,
    candidate TEXT NOT NULL, attack TEXT NOT NULL, budget REAL NOT NULL,
    defense TEXT NOT NULL, seed INTEGER NOT NULL, status TEXT NOT NULL,
    clean_val REAL, clean_test REAL, poisoned_val REAL, poisoned_test REAL,
    n_poison INTEGER, poisons_removed INTEGER, clean_removed INTEGER,
    seconds REAL, device TEXT, error TEXT, diagnostics TEXT, finished_at REAL, split INTEGER NOT NULL DEFAULT 0
);
"""

#: the tables schema 1 keyed without a split, with their schema-1 columns (:meth:`Store._migrate`)
_SPLIT_TABLES = {
    "clean": "candidate, seed, val_metric, test_metric, seconds, train",
    "clean_defended": "candidate, seed, defense, val_metric, test_metric, clean_removed, error",
    "targets": "candidate, seed, eps_w, val_metric, test_metric, threshold, gradpc",
}

CELL_COLUMNS = (
    "cell_key",
    "position",
    "candidate",
    "attack",
    "budget",
    "defense",
    "seed",
    "status",
    "clean_val",
    "clean_test",
    "poisoned_val",
    "poisoned_test",
    "n_poison",
    "poisons_removed",
    "clean_removed",
    "seconds",
    "device",
    "error",
    "diagnostics",
    "finished_at",
    "split",
)


def cell_key(candidate: str, attack: str, budget: float, defense: str, seed: int, split: int = 0) -> str:
    """The key a cell is stored under; the split index is part of it from the second split on (a one-split
    run's keys are those of the versions before repeated splits)."""
    parts: list[Any] = [json.loads(candidate), attack, budget, defense, seed]
    return json.dumps(parts + [split] if split else parts, sort_keys=True)


def plan_digest(keys: set[str] | list[str]) -> str:
    """SHA-256 of a plan: its cell keys (candidate, attack, budget, defense, seed each), sorted, as JSON."""
    return hashlib.sha256(json.dumps(sorted(keys), separators=(",", ":")).encode()).hexdigest()


def grid_plan(seed_plan: dict[str, list[int]], budgets: list[float], splits: int = 1) -> set[str]:
    """The grid's cell keys from a stored seed plan (``cell_seeds``), the budgets and the number of splits."""
    keys: set[str] = set()
    for triple, planned in seed_plan.items():
        candidate, attack, defense = json.loads(triple)
        keys.update(cell_key(candidate, attack, eps, defense, s, j) for j in range(splits) for eps in budgets for s in planned)
    return keys


def stored_splits(meta: dict[str, Any]) -> int:
    """How many splits of the data a stored run ran (meta ``splits``; 1 for runs from before repeated splits)."""
    return int((meta.get("splits") or {}).get("run", 1))


def stored_plan(meta: dict[str, Any], budgets: list[float] | None = None) -> set[str] | None:
    """Every cell key a stored run planned: the grid's (``cell_seeds`` × ``budgets``, by default the stored config's)
    and the confirmation cells the stage planned; None for a run whose store predates ``cell_seeds``."""
    seeds = meta.get("cell_seeds")
    if seeds is None:
        return None
    keys = grid_plan(seeds, budgets if budgets is not None else [float(b) for b in meta["config"]["budgets"]], stored_splits(meta))
    keys.update((meta.get("confirmation") or {}).get("cells", []))
    return keys


class CleanRow(NamedTuple):
    """One clean model of the store: its candidate (canonical JSON), seed, metrics on D_val and D_test, training time,
    training record and split."""

    candidate: str
    seed: int
    val: float
    test: float
    seconds: float
    record: dict[str, Any]
    split: int = 0


class DefendedRow(NamedTuple):
    """One defense run on clean data: its candidate, seed, defense key, metrics (None when it failed), clean points
    removed, error and split."""

    candidate: str
    seed: int
    defense: str
    val: float | None
    test: float | None
    removed: int | None
    error: str | None
    split: int = 0


class DefendedDiagnostics(NamedTuple):
    """A defense's diagnostics on clean data (the certificates' curves, …)."""

    candidate: str
    split: int
    seed: int
    defense: str
    diagnostics: dict[str, Any]


@dataclass
class Cell:
    """One row of the grid's results."""

    cell_key: str
    position: int
    candidate: str
    attack: str
    budget: float
    defense: str
    seed: int
    status: str
    clean_val: float | None = None
    clean_test: float | None = None
    poisoned_val: float | None = None
    poisoned_test: float | None = None
    n_poison: int | None = None
    poisons_removed: int | None = None
    clean_removed: int | None = None
    seconds: float | None = None
    device: str | None = None
    error: str | None = None
    diagnostics: str | None = None
    finished_at: float | None = None
    split: int = 0  # which draw of the data's partition (repeated splits; 0: the configured split)

    @property
    def repeat(self) -> tuple[int, int]:
        """``(split, seed)``: the repeat this cell belongs to (the unit intervals vary over)."""
        return (self.split, self.seed)

    @property
    def hparams(self) -> dict[str, Any]:
        return json.loads(self.candidate)

    def recorded(self, part: str) -> dict[str, Any]:
        """One part of the stored diagnostics (``attack``, ``defense``, ``retrain``, ``se``, ``attacker_split``, …); {} when absent."""
        return json.loads(self.diagnostics or "{}").get(part) or {}

    def attack_diagnostics(self, kind: type[D]) -> D:
        """The attack's diagnostics read back as ``kind`` (the attack class's ``Diagnostics``)."""
        return kind.from_json(self.recorded("attack"))

    def defense_diagnostics(self, kind: type[D]) -> D:
        """The defense's diagnostics read back as ``kind`` (the defense class's ``Diagnostics``)."""
        return kind.from_json(self.recorded("defense"))


@dataclass
class PolicyRow:
    """One policy at one budget and seed (ε = 0: clean data)."""

    base: str
    policy: str
    budget: float
    seed: int
    lam: float
    l2: float
    norm_w2: float
    val_metric: float
    test_metric: float
    seconds: float
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: what a run writes into its directory (besides poisons/*.npz); --restart removes these and nothing else
RUN_FILES = (STORE_FILE, STORE_FILE + "-wal", STORE_FILE + "-shm", STORE_FILE + "-journal", "report.html", "summary.json", "gate.xml")


def is_run_directory(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a poison-audit store with its metadata."""
    path = run_dir / STORE_FILE
    if not path.is_file():
        return False
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
            return db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() is not None
    except sqlite3.Error:
        return False


def never_started(run_dir: Path) -> bool:
    """True when ``run_dir``'s store was created but never initialised — 0 bytes, or an SQLite file with no tables
    (a run killed right after creating it): nothing in it can be lost, so a resume replaces it."""
    path = run_dir / STORE_FILE
    if not path.is_file() or path.is_symlink():
        return False
    if path.stat().st_size == 0:
        return True
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
            return db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
    except sqlite3.Error:
        return False


def clean_temporaries(run_dir: Path) -> int:
    """Remove the temporary files interrupted writes left in ``poisons/`` (``*.tmp``, never a link); returns how many."""
    poisons = run_dir / "poisons"
    refuse_link(poisons)
    if not poisons.is_dir():
        return 0
    leftovers = [p for p in poisons.glob("*.tmp") if p.is_file() and not p.is_symlink()]
    for path in leftovers:
        path.unlink()
    return len(leftovers)


def remove_run(run_dir: Path) -> None:
    """Delete what a run wrote in ``run_dir`` — its store, cached poisons, report, summary and gate file,
    and temporary files of interrupted writes — never anything else; an empty ``poisons/`` goes too."""
    if not is_run_directory(run_dir):
        raise AuditError(f"{run_dir} is not a poison-audit run directory (no readable {STORE_FILE}); refusing to delete anything in it")
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for name in ("report.html", "summary.json", "gate.xml"):  # atomic_write's leftovers: .NAME.*.tmp
        for leftover in run_dir.glob(f".{name}.*.tmp"):
            leftover.unlink()
    poisons = run_dir / "poisons"
    refuse_link(poisons)  # its files are deleted: never those of a folder elsewhere
    if poisons.is_dir():
        for path in [*poisons.glob("*.npz"), *poisons.glob("*.tmp")]:
            path.unlink()
        if not any(poisons.iterdir()):
            poisons.rmdir()


def checkpoint(run_dir: Path) -> None:
    """Fold the store's write-ahead log into ``results.sqlite`` and truncate it (call with the run's lock held):
    what a manifest hashes is then the whole store — a change committed into a ``-wal`` the manifest did not
    cover would otherwise pass ``verify`` while the gate reads it. One line when a non-empty log is left."""
    run_dir = Path(run_dir)
    store = Store(run_dir)
    store.refuse_links()
    try:
        db = sqlite3.connect(store.path, timeout=30)
        try:
            # the store stays in WAL mode (switching it would rewrite the file's header on the next open, after the
            # manifest hashed it); the log is folded in and truncated, and the last connection's close deletes it
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()
    except sqlite3.Error as err:
        raise AuditError(f"{store.path}: cannot fold its write-ahead log into the store ({err}); is another process using it?") from None
    left = [name for name in (STORE_FILE + "-wal", STORE_FILE + "-journal") if (run_dir / name).is_file() and (run_dir / name).stat().st_size]
    if left:
        raise AuditError(f"{run_dir}: {', '.join(left)} still holds store changes after a checkpoint; close whatever uses the store and export again")


def stored_cells(run_dir: str | Path) -> list[Cell]:
    """The cells of a run directory's store, in grid order, read without writing (a one-line error where there is no run)."""
    store = Store.open_existing(run_dir, read_only=True)
    try:
        return store.cells()
    finally:
        store.close()


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in db.execute(f"PRAGMA table_info({table})")}


def _read_poison_file(path: Path) -> dict[str, Any] | None:
    """A cached poison set's arrays and strings, or None where ``path`` is missing, a link, or not a poison file
    this tool wrote (truncated, replaced, tampered): never unpickled, never a traceback."""
    if path.is_symlink() or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {"x": npz["x"], "y": npz["y"], "key": str(npz["key"]), "diagnostics": str(npz["diagnostics"])}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


class Store:
    """SQLite store of one run directory."""

    def __init__(self, run_dir: str | Path, read_only: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STORE_FILE
        self.poison_dir = self.run_dir / "poisons"
        self.read_only = read_only
        self._db: sqlite3.Connection | None = None

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def open_existing(cls, run_dir: str | Path, read_only: bool = False) -> Store:
        """Open a finished or interrupted run for reading; a clear error when it is not one. ``read_only``:
        never write (gate, report and the analysis), so a run directory on a read-only mount can be read."""
        store = cls(run_dir, read_only)
        if not store.run_dir.is_dir():
            raise AuditError(f"run directory not found: {store.run_dir}")
        if not store.path.is_file():
            raise AuditError(f"{store.run_dir} holds no {STORE_FILE}: not a poison-audit run directory")
        try:
            version = store.meta("schema_version")
        except sqlite3.DatabaseError as err:
            store.close()
            raise AuditError(f"{store.path} is not a readable poison-audit store ({err})") from None
        if version is None:
            raise AuditError(f"{store.path}: no run metadata (the run never got past its start)")
        if int(version) not in (1, STORE_SCHEMA_VERSION):
            raise AuditError(f"{store.path}: store schema {version}, this version reads 1 and {STORE_SCHEMA_VERSION}")
        return store

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.refuse_links()
            if self.read_only and not os.access(self.run_dir, os.W_OK):
                self._db = self._read_only_connection()
                return self._db
            self._db = sqlite3.connect(self.path, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            if not self.read_only:  # a reader never changes the file (a signed run's hash): it reads schema 1 as it is
                self._migrate(self._db)
                self._db.executescript(_SCHEMA)
        return self._db

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Bring a schema-1 store (no ``split`` column: every row is of split 0) to the current schema, in one transaction."""
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "clean_defended" in tables and "diagnostics" not in _columns(db, "clean_defended"):  # added within schema 2
            with db:
                db.execute("ALTER TABLE clean_defended ADD COLUMN diagnostics TEXT")
        if "cells" not in tables or "split" in _columns(db, "cells"):
            return
        script = ["BEGIN", "ALTER TABLE cells ADD COLUMN split INTEGER NOT NULL DEFAULT 0"]
        script += [f"ALTER TABLE {t} RENAME TO {t}_v1" for t in _SPLIT_TABLES if t in tables]
        script += [_SCHEMA]
        for table, columns in _SPLIT_TABLES.items():
            if table in tables:
                script += [f"INSERT INTO {table} ({columns}, split) SELECT {columns}, 0 FROM {table}_v1", f"DROP TABLE {table}_v1"]
        script += [f"INSERT OR REPLACE INTO meta VALUES ('schema_version', '{STORE_SCHEMA_VERSION}')", "COMMIT"]
        try:
            db.executescript(";\n".join(script))
        except sqlite3.Error:
            db.rollback()
            raise

    def _split(self, table: str) -> str:
        """The ``split`` column of ``table``, or ``0`` in a schema-1 store read as it is (every row of split 0)."""
        return "split" if "split" in _columns(self.db, table) else "0"

    def _read_only_connection(self) -> sqlite3.Connection:
        """A connection that writes nothing, for a run directory this process cannot write (a read-only mount, a
        directory another user owns; README: Run directory). SQLite cannot create its shared-memory file there, so a
        store with no write-ahead log is opened ``immutable`` (nothing can change it: nobody can write the
        directory); one with a log needs the ``-shm`` file its writer left and is opened ``mode=ro``."""
        wal = self.run_dir / (STORE_FILE + "-wal")
        flag = "mode=ro" if wal.is_file() and wal.stat().st_size else "immutable=1"
        try:
            return sqlite3.connect(f"{self.path.resolve().as_uri()}?{flag}", uri=True, timeout=30)
        except sqlite3.Error as err:
            raise AuditError(f"{self.path}: cannot read the store in a directory this process cannot write ({err})") from None

    def refuse_links(self) -> None:
        """The store and its side files as links (or hard-linked files) are refused: SQLite writes them in place."""
        for name in (STORE_FILE, STORE_FILE + "-wal", STORE_FILE + "-shm", STORE_FILE + "-journal"):
            refuse_link(self.run_dir / name)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def initialise(self, meta: dict[str, Any]) -> None:
        """Write the run's metadata once, in one transaction (values JSON-encoded)."""
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [("schema_version", str(STORE_SCHEMA_VERSION))] + [(k, json.dumps(v)) for k, v in meta.items()],
            )

    def set_meta(self, key: str, value: Any) -> None:
        """One metadata value (JSON-encoded), in its own transaction."""
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def meta(self, key: str) -> Any:
        if not self.path.is_file():
            return None
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return row[0] if key == "schema_version" else json.loads(row[0])

    def all_meta(self) -> dict[str, Any]:
        rows = self.db.execute("SELECT key, value FROM meta").fetchall()
        return {k: (v if k == "schema_version" else json.loads(v)) for k, v in rows}

    # ------------------------------------------------------------------ cells
    def finished_keys(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT cell_key FROM cells WHERE status = 'ok'")}

    def put_cell(self, cell: Cell) -> None:
        cell.finished_at = time.time()
        values = tuple(getattr(cell, c) for c in CELL_COLUMNS)
        with self.db:
            self.db.execute(
                f"INSERT OR REPLACE INTO cells ({', '.join(CELL_COLUMNS)}) VALUES ({', '.join('?' * len(CELL_COLUMNS))})",
                values,
            )

    def cells(self) -> list[Cell]:
        columns = ", ".join(CELL_COLUMNS).replace(", split", f", {self._split('cells')}")
        rows = self.db.execute(f"SELECT {columns} FROM cells ORDER BY position").fetchall()
        return [Cell(*row) for row in rows]

    # ------------------------------------------------------------------ clean models
    def put_clean(self, candidate: str, seed: int, val: float, test: float, seconds: float, train: dict, split: int = 0) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO clean VALUES (?, ?, ?, ?, ?, ?, ?)",
                (candidate, seed, val, test, seconds, json.dumps(train), split),
            )

    def clean_rows(self) -> Iterator[CleanRow]:
        """Every clean model, as a :class:`CleanRow`."""
        # a fixed order (not the order the rows were written in, which a parallel executor changes): means are bit-equal
        query = f"SELECT {_SPLIT_TABLES['clean']}, {self._split('clean')} AS split_ FROM clean ORDER BY candidate, split_, seed"
        for cand, seed, val, test, sec, train, split in self.db.execute(query):
            yield CleanRow(cand, seed, val, test, sec, json.loads(train), split)

    # ------------------------------------------------------------------ defenses on clean data
    def put_clean_defended(
        self,
        candidate: str,
        seed: int,
        defense: str,
        val: float | None,
        test: float | None,
        removed: int | None,
        error: str | None = None,
        split: int = 0,
        diagnostics: dict[str, Any] | None = None,
    ) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO clean_defended (candidate, seed, defense, val_metric, test_metric, clean_removed, error, split, "
                "diagnostics) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (candidate, seed, defense, val, test, removed, error, split, None if diagnostics is None else json.dumps(diagnostics)),
            )

    def clean_defended_diagnostics(self) -> list[DefendedDiagnostics]:
        """Every defense run on clean data that recorded its diagnostics (the certificates' curves, …); none in a store
        written before they were kept."""
        if "diagnostics" not in _columns(self.db, "clean_defended"):
            return []
        query = (
            f"SELECT candidate, {self._split('clean_defended')} AS split_, seed, defense, diagnostics FROM clean_defended "
            "WHERE diagnostics IS NOT NULL ORDER BY candidate, split_, seed, defense"
        )
        return [DefendedDiagnostics(c, j, s, d, json.loads(diag)) for c, j, s, d, diag in self.db.execute(query)]

    def clean_defended_rows(self) -> list[DefendedRow]:
        """Every defense run on clean data, as a :class:`DefendedRow`."""
        query = (
            f"SELECT {_SPLIT_TABLES['clean_defended']}, {self._split('clean_defended')} AS split_ FROM clean_defended "
            "ORDER BY candidate, split_, seed, defense"
        )
        return [DefendedRow(*row) for row in self.db.execute(query)]

    # ------------------------------------------------------------------ poisonability targets
    def put_target(self, candidate: str, seed: int, eps_w: float, val: float, test: float, threshold: dict, gradpc: dict, split: int = 0) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO targets VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (candidate, seed, eps_w, val, test, json.dumps(threshold), json.dumps(gradpc), split),
            )

    def target_rows(self) -> list[dict[str, Any]]:
        query = f"SELECT {_SPLIT_TABLES['targets']}, {self._split('targets')} AS split_ FROM targets ORDER BY candidate, split_, seed, eps_w"
        rows = self.db.execute(query).fetchall()
        keys = ("candidate", "seed", "eps_w", "val_metric", "test_metric", "threshold", "gradpc", "split")
        out = [dict(zip(keys, r)) for r in rows]
        for r in out:
            r["threshold"], r["gradpc"] = json.loads(r["threshold"]), json.loads(r["gradpc"])
        return out

    # ------------------------------------------------------------------ λ policies under attack (minimax)
    def put_policy(self, row: Any) -> None:
        """One :class:`audit.grid.minimax.PolicyRow`, in its own transaction."""
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO policies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.base,
                    row.policy,
                    row.budget,
                    row.seed,
                    row.lam,
                    row.l2,
                    row.norm_w2,
                    row.val_metric,
                    row.test_metric,
                    row.seconds,
                    json.dumps(row.diagnostics),
                ),
            )

    def policy_rows(self) -> list[Any]:
        rows = self.db.execute("SELECT * FROM policies ORDER BY rowid").fetchall()
        names = [f.name for f in fields(PolicyRow) if f.name != "diagnostics"]
        return [PolicyRow(**dict(zip(names, r[:10])), diagnostics=json.loads(r[10])) for r in rows]

    # ------------------------------------------------------------------ poison cache
    def _poison_path(self, key: str) -> Path:
        return self.poison_dir / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".npz")

    def load_poisons(self, key: str) -> tuple[np.ndarray, np.ndarray, dict] | None:
        found = _read_poison_file(self._poison_path(key))
        if found is None or found["key"] != key:
            return None  # a miss: the attack crafts again and the save replaces the file
        return found["x"], found["y"], json.loads(found["diagnostics"])

    def poison_samples(self, attacks: Collection[str], k: int = 8) -> list[dict[str, Any]]:
        """The first ``k`` poisons of every cached poison set made by one of ``attacks`` (attack keys
        whose diagnostics record their source points, such as TGDA's), with the parsed cache key."""
        out = []
        for path in sorted(self.poison_dir.glob("*.npz")) if self.poison_dir.is_dir() else []:
            found = _read_poison_file(path)
            if found is None:
                continue
            try:
                candidate, attack, _params, budget, seed, fingerprint = json.loads(found["key"])[:6]  # then a split index, from split 1 on
                if attack not in attacks:
                    continue
                diagnostics = SourcedDiagnostics.from_json(json.loads(found["diagnostics"]))
            except (ValueError, TypeError, KeyError):
                continue  # not a poison set this version wrote: no sample from it
            if not diagnostics.source_examples:
                continue
            out.append(
                {
                    "candidate": candidate,
                    "attack": attack,
                    "budget": budget,
                    "seed": seed,
                    "fingerprint": fingerprint,
                    "x": found["x"][:k],
                    "y": found["y"][:k],
                    "source": diagnostics.source_examples[:k],
                    "diagnostics": diagnostics,
                }
            )
        return out

    def save_poisons(self, key: str, x: np.ndarray, y: np.ndarray, diagnostics: dict) -> None:
        """Atomic write: a temporary file in the same folder, renamed into place."""
        own_dir(self.poison_dir)
        fd, tmp = tempfile.mkstemp(dir=self.poison_dir, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez_compressed(fh, x=x, y=y, key=np.array(key), diagnostics=np.array(json.dumps(diagnostics)))
            os.replace(tmp, self._poison_path(key))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
