"""A run's manifest (SHA-256 of every artifact), its Ed25519 signature, and their verification.

``manifest.json`` lists every file of the run directory — report, summary, store, poisons, gate
results, the compliance documents — with its size and SHA-256, and, when it was signed, who
signed, when, and the signer's public key. ``manifest.sig`` holds the Ed25519 signature
(base64) of the manifest's exact bytes. :func:`verify` recomputes every hash and checks the
signature; nothing is signed silently: an unsigned manifest says so.

Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public) as :func:`generate_key`
writes them or ``openssl genpkey -algorithm ed25519`` does; an encrypted private key takes its
password from the environment variable :data:`PASSWORD_ENV`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import AuditError
from audit.jsonio import atomic_write

MANIFEST, SIGNATURE = "manifest.json", "manifest.sig"
MANIFEST_SCHEMA_VERSION = 1
PASSWORD_ENV = "POISON_AUDIT_KEY_PASSWORD"
#: files of a run directory that are not artifacts: the lock, SQLite's side files, temporaries, the manifest itself
_NOT_ARTIFACTS = (".poison-audit.lock", MANIFEST, SIGNATURE)
_SIDE_SUFFIXES = ("-wal", "-shm", "-journal", ".tmp")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def artifacts(run_dir: Path) -> list[Path]:
    """Every artifact file under ``run_dir``, relative, sorted (POSIX order of the relative paths)."""
    out = []
    for path in run_dir.rglob("*"):
        rel = path.relative_to(run_dir)
        if not path.is_file() or path.is_symlink() or rel.as_posix() in _NOT_ARTIFACTS or path.name.endswith(_SIDE_SUFFIXES):
            continue
        out.append(rel)
    return sorted(out, key=lambda p: p.as_posix())


@dataclass(frozen=True)
class Signing:
    """Who signs a run's manifest, with which key, and when (UTC, ISO 8601)."""

    key_path: Path
    signer: str
    signed_at: str = field(default_factory=lambda: utc_now())


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def load_private_key(path: Path) -> Any:
    """An Ed25519 private key from a PEM file (one-line errors for a missing, wrong or encrypted key)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if not path.is_file():
        raise AuditError(f"--sign-key: no such file: {path}")
    password = os.environ.get(PASSWORD_ENV)
    try:
        key = load_pem_private_key(path.read_bytes(), password=password.encode() if password else None)
    except TypeError:
        raise AuditError(f"--sign-key: {path} is encrypted; put its password in the environment variable {PASSWORD_ENV}") from None
    except ValueError as err:
        raise AuditError(f"--sign-key: {path} is not a readable PEM private key ({str(err).splitlines()[0]})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(f"--sign-key: {path} holds a {type(key).__name__.lstrip('_')}, not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Any:
    """An Ed25519 public key from a PEM file (a private key file is accepted: its public half)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if not path.is_file():
        raise AuditError(f"--public-key: no such file: {path}")
    data = path.read_bytes()
    try:
        key = load_pem_public_key(data)
    except ValueError:
        try:
            key = load_private_key(path).public_key()
        except AuditError:
            raise AuditError(f"--public-key: {path} is not a readable PEM public key") from None
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError(f"--public-key: {path} holds a {type(key).__name__.lstrip('_')}, not an Ed25519 key")
    return key


def public_pem(public_key: Any) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def key_fingerprint(public_key: Any) -> str:
    """``SHA256:`` + the hex SHA-256 of the raw 32-byte public key (what the documents print)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return "SHA256:" + hashlib.sha256(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()


def generate_key(path: Path) -> tuple[Path, Path]:
    """Write a new Ed25519 private key to ``path`` (mode 0600, refused if it exists) and its public key
    to ``path`` + ``.pub``; returns both paths."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, Encoding, NoEncryption, PrivateFormat

    public = path.with_name(path.name + ".pub")
    for p in (path, public):
        if p.exists():
            raise AuditError(f"{p} exists; keygen never overwrites a key")
    if not path.parent.is_dir():
        raise AuditError(f"no such directory: {path.parent}")
    key = Ed25519PrivateKey.generate()
    password = os.environ.get(PASSWORD_ENV)
    encryption = BestAvailableEncryption(password.encode()) if password else NoEncryption()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption))
    public.write_text(public_pem(key.public_key()))
    return path, public


def build_manifest(
    run_dir: Path, name: str, tool_version: str, signing: Signing | None, public_key: Any = None, plan: str | None = None
) -> dict[str, Any]:
    """The manifest of ``run_dir`` now: every artifact's size and SHA-256, the digest of the run's plan (every planned
    cell key: :func:`audit.grid.store.plan_digest`), and the signature block."""
    files = [{"path": rel.as_posix(), "bytes": (run_dir / rel).stat().st_size, "sha256": sha256_file(run_dir / rel)} for rel in artifacts(run_dir)]
    signature = None
    if signing is not None:
        signature = {
            "algorithm": "Ed25519",
            "signer": signing.signer,
            "signed_at": signing.signed_at,
            "public_key": public_pem(public_key),
            "key_fingerprint": key_fingerprint(public_key),
            "file": SIGNATURE,
        }
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "run": name,
        "tool": f"poison-audit {tool_version}",
        "created": utc_now(),
        "hash": "SHA-256",
        "plan_digest": plan,
        "files": files,
        "signature": signature,
    }


def write_manifest(run_dir: Path, manifest: dict[str, Any], private_key: Any = None) -> Path:
    """Write ``manifest.json`` and, with a key, ``manifest.sig`` over its exact bytes; an unsigned
    manifest removes a stale signature (a signature never outlives the manifest it signed)."""
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    sig_path = run_dir / SIGNATURE
    if private_key is not None:
        atomic_write(sig_path, base64.b64encode(private_key.sign(text.encode("utf-8"))).decode() + "\n")
    elif sig_path.exists():
        sig_path.unlink()
    atomic_write(run_dir / MANIFEST, text)
    return run_dir / MANIFEST


@dataclass
class Verification:
    """What :func:`verify` found: ``problems`` make it fail (exit 1); ``notes`` do not."""

    checked: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    signer: str | None = None
    signed_at: str | None = None
    key_fingerprint: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(run_dir: Path, public_key_path: Path | None = None) -> Verification:
    """Recompute every listed artifact's SHA-256 and check the signature.

    Problems (verification fails): no or unreadable manifest; a listed file missing or changed; a
    signature that does not verify; with ``public_key_path``: an unsigned manifest, or a signature
    by another key. Without ``public_key_path`` a signed manifest is checked against the key it
    embeds — that proves the files are what that key signed, not who holds it (a note says so).
    Files added after the manifest was written are notes, not problems: they are not part of the record.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AuditError(f"run directory not found: {run_dir}")
    expected = load_public_key(public_key_path) if public_key_path is not None else None
    result = Verification()
    path = run_dir / MANIFEST
    if not path.is_file():
        result.problems.append(f"no {MANIFEST} in {run_dir}: nothing to verify (write one with `poison-audit export {run_dir}`)")
        return result
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw)
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        result.problems.append(f"{MANIFEST} is not a poison-audit manifest")
        return result
    listed = set()
    for entry in files:
        rel = entry.get("path", "")
        listed.add(rel)
        target = run_dir / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            result.problems.append(f"{rel}: a path outside the run directory")
        elif not target.is_file():
            result.problems.append(f"{rel}: missing")
        elif sha256_file(target) != entry.get("sha256"):
            result.problems.append(f"{rel}: changed (SHA-256 differs from the manifest)")
        result.checked += 1
    problem = _plan_problem(run_dir, manifest.get("plan_digest"))
    if problem:
        result.problems.append(problem)
    for side in ("results.sqlite-wal", "results.sqlite-journal"):  # SQLite reads these with the store: not covered, not trusted
        side_path = run_dir / side
        if side_path.is_file() and side_path.stat().st_size > 0:
            result.problems.append(
                f"{side}: store changes the manifest does not cover (the gate and report would read them); "
                "export again to fold them in and sign what they say"
            )
    added = [rel.as_posix() for rel in artifacts(run_dir) if rel.as_posix() not in listed]
    if added:
        result.notes.append(
            f"not in the manifest (written after it, not part of the record): {', '.join(added[:10])}"
            + (f" and {len(added) - 10} more" if len(added) > 10 else "")
        )
    block = manifest.get("signature")
    sig_path = run_dir / SIGNATURE
    if block is None:
        if expected is not None:
            result.problems.append("the manifest is unsigned, but --public-key asks for a signature")
        else:
            result.notes.append("unsigned: the hashes show the files are unchanged since the manifest was written, not who wrote it")
        return result
    result.signer, result.signed_at, result.key_fingerprint = block.get("signer"), block.get("signed_at"), block.get("key_fingerprint")
    if not sig_path.is_file():
        result.problems.append(f"the manifest says it is signed but {SIGNATURE} is missing")
        return result
    try:
        embedded = load_pem_public_key(str(block["public_key"]).encode())
        signature = base64.b64decode(sig_path.read_text().strip(), validate=True)
    except (ValueError, KeyError, TypeError):
        result.problems.append("the signature block or manifest.sig is unreadable")
        return result
    if not isinstance(embedded, Ed25519PublicKey):
        result.problems.append("the manifest embeds a key that is not Ed25519")
        return result
    key = expected if expected is not None else embedded
    try:
        key.verify(signature, raw)
    except InvalidSignature:
        who = "the --public-key given" if expected is not None else "the key the manifest embeds"
        result.problems.append(f"the signature does not verify under {who}")
        return result
    if expected is None:
        result.notes.append(
            f"signature valid under the key the manifest embeds ({block.get('key_fingerprint')}); pass --public-key to check it is the signer's"
        )
    return result


def _plan_problem(run_dir: Path, recorded: Any) -> str | None:
    """Why the store's plan (every planned cell key) is not the one the manifest records, or None (also when the
    manifest records none, from before plans were digested, or the store cannot be read: its file check says so)."""
    if not isinstance(recorded, str):
        return None
    import sqlite3

    from audit.grid.store import STORE_FILE, plan_digest, stored_plan

    path, wal = run_dir / STORE_FILE, run_dir / (STORE_FILE + "-wal")
    if path.is_symlink() or not path.is_file() or (wal.is_file() and wal.stat().st_size):
        return None  # the file checks report these; a connection would fold the log into the signed store
    try:  # immutable: verify never writes, and a connection that checkpointed would change what it checks
        db = sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True)
        try:
            meta = {k: (v if k == "schema_version" else json.loads(v)) for k, v in db.execute("SELECT key, value FROM meta")}
        finally:
            db.close()
        planned = stored_plan(meta)
    except Exception:  # an unreadable store is reported by its SHA-256 line
        return None
    if planned is None or plan_digest(planned) != recorded:
        return "the store's plan (its planned cells) is not the plan the manifest records"
    return None
