"""Command line: ``poison-audit run | report | gate | export | verify | keygen | threshold | list``.

A user mistake is one line on stderr and exit code 2 (never a traceback); ``gate`` exits 1
when the model is too poisonable and 3 when the run is incomplete (no verdict); ``run`` exits 4
when cells failed (after writing the report that lists them); ``verify`` exits 1 on any mismatch;
Ctrl-C exits 130 and the same command resumes.
"""

from __future__ import annotations

import errno
import functools
import math
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from audit.errors import AuditError

#: exit codes: 0 success / gate pass, 1 gate fail, 2 user error, 3 gate without verdict (incomplete run),
#: 4 a run with failed cells (its report is written and lists them), 130 interrupted
EXIT_USER_ERROR, EXIT_CELLS_FAILED, EXIT_INTERRUPTED = 2, 4, 130


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AuditError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)
        except (OSError, sqlite3.OperationalError) as err:
            if not _disk_full(err):
                raise
            where = getattr(err, "filename", None) or "the run directory's device"
            click.echo(f"error: no space left on {where} ({err}); finished cells are stored — free space and run the same command again", err=True)
            sys.exit(2)

    return wrapper


def _disk_full(err: BaseException) -> bool:
    """A full disk or quota, as the OS (ENOSPC, EDQUOT) or SQLite ("database or disk is full") reports it."""
    if isinstance(err, sqlite3.OperationalError):
        return "disk is full" in str(err)
    return getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT)


def _workers(value: str) -> int | str:
    """``--workers`` (or ``POISON_AUDIT_WORKERS``): ``auto`` or a whole number from 1 to 1024."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= 1024:
        raise AuditError(f"--workers: {value!r} is not 'auto' or a whole number from 1 to 1024 (also read from POISON_AUDIT_WORKERS)")
    return n


class _OneLineGroup(click.Group):
    """click's group, but a usage mistake is one line (``error: …``, exit 2) instead of usage + hint + error,
    and Ctrl-C at any moment exits 130 (click would say "Aborted!" and exit 1)."""

    def main(
        self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None, standalone_mode: bool = True, **extra: Any
    ) -> Any:
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except (KeyboardInterrupt, click.exceptions.Abort):
            click.echo("\ninterrupted: finished cells are stored; run the same command again to resume", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.exceptions.ClickException as err:
            click.echo(f"error: {err.format_message()}", err=True)
            sys.exit(EXIT_USER_ERROR if isinstance(err, click.exceptions.UsageError) else err.exit_code)


@click.group(cls=_OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="poison-audit")
def cli() -> None:
    """Audit how far a model can be damaged by indiscriminate data poisoning."""


@cli.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "output_dir", type=click.Path(path_type=Path), help="Output directory (overrides the config's output_dir).")
@click.option("--restart", is_flag=True, help="Discard a previous run of a different config in the same run directory.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads for torch in each cell (default: 1 in worker processes; with --workers 1 the CPUs this process may use). "
    "Part of the run's fingerprint.",
)
@click.option(
    "--profile",
    type=click.Choice(["quick", "standard", "paper"]),
    default=None,
    help="How hard the attacks work (overrides the config's profile; default quick). README: Profiles.",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default=None,
    help="Where the cells run (overrides the config's executor.kind; ray needs the [ray] extra). README: Scale out.",
)
@click.option(
    "--workers",
    envvar="POISON_AUDIT_WORKERS",
    default=None,
    help="Cells run at once, each in a worker process at --threads threads (default 1): a number, or auto (the default: "
    "the CPUs this process may use over the threads per cell; 1 on a GPU); 1 runs them in this process. Overrides executor.workers; "
    "env POISON_AUDIT_WORKERS. README: Scale out.",
)
@click.option(
    "--no-confirm",
    is_flag=True,
    help="Skip the confirmation stage (confirm: false): the verdict is then a labelled lower bound. README: The verdict.",
)
@_user_errors
def run(
    config: Path | None,
    output_dir: Path | None,
    restart: bool,
    quiet: bool,
    threads: int | None,
    profile: str | None,
    executor: str | None,
    workers: str | None,
    no_confirm: bool,
) -> None:
    """Run (or resume) the audit CONFIG describes; without CONFIG, the embedded default audit."""
    from audit.config import AuditConfig, load_config
    from audit.threads import configure_threads

    if config is not None:
        load_config(config, shallow=True)  # most mistakes in a config are reported before torch and ART load
    configure_threads(threads)  # before torch is imported: idle OpenMP threads sleep instead of spinning
    from audit.grid.runner import run_audit
    from audit.report import write_report

    cfg = load_config(config) if config is not None else AuditConfig()
    if profile is not None and profile != cfg.profile:
        # the embedded default audit keeps one run directory per profile (reports/default, reports/default-paper)
        name = f"default-{profile}" if config is None and profile != "quick" else cfg.name
        cfg = cfg.model_copy(update={"profile": profile, "name": name})
    if executor is not None:
        cfg = cfg.model_copy(update={"executor": cfg.executor.model_copy(update={"kind": executor})})
    if cfg.executor.kind == "local":  # from the command line the cells run in worker processes unless told otherwise
        local: dict[str, Any] = {"workers": _workers(workers) if workers is not None else (cfg.executor.workers or "auto")}
        if threads is not None:
            local["cpus_per_cell"] = float(threads)  # --threads is each cell's thread count, in a worker as in this process
        cfg = cfg.model_copy(update={"executor": cfg.executor.model_copy(update=local)})
    if no_confirm:
        cfg = cfg.model_copy(update={"confirm": cfg.confirm.model_copy(update={"enabled": False})})
    run_dir = run_audit(cfg, output_dir=output_dir, restart=restart, progress=not quiet)  # Ctrl-C: _OneLineGroup exits 130
    html = write_report(run_dir)
    click.echo(f"report: {html}")
    click.echo(f"summary: {run_dir / 'summary.json'}")
    from audit.report.analysis import analyse

    a = analyse(run_dir)
    done = a.completeness()
    if done.failed:
        first = next((c.error for c in a.cells if c.status == "failed"), "")
        if done.failed == done.planned:
            click.echo(f"error: all {done.planned} cells failed (first error: {first}); the report lists them", err=True)
        else:
            click.echo(f"error: {done.failed} of {done.planned} cells failed (first error: {first}); the report lists them", err=True)
        sys.exit(EXIT_CELLS_FAILED)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write report.html and summary.json into this directory instead (RUN_DIR is then only read).",
)
@_user_errors
def report(run_dir: Path, out: Path | None) -> None:
    """Re-render RUN_DIR's report.html and summary.json from its store (no recomputation)."""
    from audit.report import write_report

    click.echo(f"report: {write_report(run_dir, out)}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--budget", type=float, required=True, help="Poison budget ε to judge (one the run used).")
@click.option(
    "--max-drop",
    "--max-increase",
    "max_drop",
    type=float,
    required=True,
    help="Largest acceptable worst-case accuracy drop in points; for regression the largest MSE increase.",
)
@click.option(
    "--allow-incomplete", is_flag=True, help="Judge a run with missing or failed cells on its finished cells (the message says how many are missing)."
)
@click.option(
    "--confidence",
    type=float,
    default=None,
    help="Judge the upper end of the worst-case drop's interval at this level (e.g. 0.95), not the point estimate.",
)
@click.option("--soft-fail", is_flag=True, help="Advisory gate: a failure (or no verdict) is reported, skipped in JUnit, and exits 0.")
@click.option(
    "--allow-lower-bound",
    is_flag=True,
    help="Judge a worst case not confirmed at full strength (--no-confirm, a budget not confirmed) as a lower bound.",
)
@click.option(
    "--allow-mismatch", is_flag=True, help="Judge a run whose retraining does not reproduce the model you handed over (every output says so)."
)
@click.option(
    "--summary",
    "summary_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help='Append a markdown step summary (verdict, worst-case table, artifacts) to this file, e.g. "$GITHUB_STEP_SUMMARY".',
)
@click.option(
    "--junit",
    "junit_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where the JUnit XML goes (default RUN_DIR/gate.xml).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object instead of text.")
@_user_errors
def gate(
    run_dir: Path,
    budget: float,
    max_drop: float,
    allow_incomplete: bool,
    confidence: float | None,
    soft_fail: bool,
    allow_lower_bound: bool,
    allow_mismatch: bool,
    summary_file: Path | None,
    junit_file: Path | None,
    as_json: bool,
) -> None:
    """Exit 0 when the recommended setting's worst-case drop at BUDGET is at most MAX-DROP, 1 when it is larger,
    3 when there is no verdict (an incomplete run, a worst case not confirmed at full strength, or an audited
    model that does not match the one you handed over); 0 either way with --soft-fail. Writes JUnit XML (gate.xml)."""
    import json

    from audit.report.gate import gate as run_gate
    from audit.report.gate import result_json, step_summary

    if not math.isfinite(max_drop) or max_drop < 0:
        raise AuditError(f"--max-drop must be ≥ 0 and finite (got {max_drop:g})")
    if not math.isfinite(budget):
        raise AuditError(f"--budget must be a finite number (got {budget:g})")
    if confidence is not None and not (math.isfinite(confidence) and 0 < confidence < 1):
        raise AuditError(f"--confidence must be in (0, 1) (got {confidence:g})")
    for option, path in (("--summary", summary_file), ("--junit", junit_file)):
        if path is not None and not path.parent.is_dir():
            raise AuditError(f"{option}: no such directory: {path.parent}")
    result = run_gate(
        run_dir,
        budget,
        max_drop,
        allow_incomplete=allow_incomplete,
        confidence=confidence,
        soft_fail=soft_fail,
        junit=junit_file,
        allow_lower_bound=allow_lower_bound,
        allow_mismatch=allow_mismatch,
    )
    name = _run_name(run_dir)
    if summary_file is not None:
        with open(summary_file, "a", encoding="utf-8") as fh:  # GitHub collects what each step appends
            fh.write(step_summary(result, Path(run_dir), name) + "\n")
    if as_json:
        click.echo(json.dumps(result_json(result, name), indent=2, allow_nan=False))
    else:
        label = "NO VERDICT: " if result.refused else "PASS: " if result.passed else "FAIL: "
        click.echo(("ADVISORY " if result.soft and not result.passed else "") + label + result.message)
        click.echo(f"junit: {junit_file or Path(run_dir) / 'gate.xml'}")
    sys.exit(result.exit_code)


def _run_name(run_dir: Path) -> str:
    """The run's name from its store (summary.json is an output the gate does not trust: it may be stale or replaced)."""
    from audit.grid.store import Store

    store = Store.open_existing(run_dir, read_only=True)
    try:
        config = store.meta("config")
    finally:
        store.close()
    return str(config.get("name")) if isinstance(config, dict) and config.get("name") else Path(run_dir).name


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "formats",
    type=click.Choice(["pdf", "md", "json", "card"]),
    multiple=True,
    help="Which documents (repeat the option; default all): the record as PDF, markdown, JSON, and a model-card snippet.",
)
@click.option(
    "--sign-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Sign the manifest with this Ed25519 private key (PEM; if encrypted, its password in $POISON_AUDIT_KEY_PASSWORD).",
)
@click.option("--signer", default=None, help="Who signs (name, role), shown in the record; default: the config's system.responsible.")
@_user_errors
def export(run_dir: Path, formats: tuple[str, ...], sign_key: Path | None, signer: str | None) -> None:
    """Write RUN_DIR's compliance record (RUN_DIR/compliance/) and manifest.json, signed with --sign-key."""
    from audit.report.export import FORMATS
    from audit.report.export import export as run_export

    written = run_export(run_dir, formats or FORMATS, sign_key=sign_key, signer=signer)
    for path in written:
        click.echo(f"wrote: {path}")
    if sign_key is None:
        click.echo("unsigned: pass --sign-key KEY.pem --signer NAME to sign the manifest")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--public-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The signer's Ed25519 public key (PEM): the signature must be by this key.",
)
@_user_errors
def verify(run_dir: Path, public_key: Path | None) -> None:
    """Recompute the SHA-256 of every file RUN_DIR's manifest lists and check its signature; exit 1 on any mismatch."""
    from audit.report.integrity import verify as run_verify

    result = run_verify(run_dir, public_key)
    for note in result.notes:
        click.echo(f"note: {note}")
    if result.ok:
        who = f"; signed by {result.signer} at {result.signed_at} ({result.key_fingerprint})" if result.signer else ""
        click.echo(f"OK: {result.checked} files match the manifest{who}")
        return
    for problem in result.problems:
        click.echo(f"FAILED: {problem}", err=True)
    sys.exit(1)


@cli.command()
@click.argument("key_file", type=click.Path(dir_okay=False, path_type=Path))
@_user_errors
def keygen(key_file: Path) -> None:
    """Write a new Ed25519 signing key to KEY_FILE (mode 0600) and its public key to KEY_FILE.pub."""
    from audit.report.integrity import generate_key

    private, public = generate_key(key_file)
    click.echo(f"private key: {private} (keep it secret; encrypted when $POISON_AUDIT_KEY_PASSWORD is set)")
    click.echo(f"public key: {public} (give it to whoever verifies)")


@cli.command()
@click.option(
    "--dataset",
    "dataset_name",
    default="mnist5k",
    show_default=True,
    help="A built-in dataset (see `poison-audit list`) or your data: a .npz, a .csv (with --label-column) or an image folder.",
)
@click.option("--label-column", default=None, help="For a .csv --dataset: the column holding the labels.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Take the dataset, model and training procedure from an audit config instead.",
)
@click.option("--model", "model_name", default="logreg", show_default=True, help="logreg, mlp or cnn.")
@click.option("--l2", type=float, default=0.0, show_default=True, help="L2 strength ρ of the victim's objective.")
@click.option("--width", type=int, default=None, help="Width of an mlp/cnn victim.")
@click.option("--seed", type=int, default=0, show_default=True, help="Training seed of the clean model.")
@click.option("--target", "target_file", type=click.Path(dir_okay=False, path_type=Path), help="Target: a state dict (torch.save) of the same model.")
@click.option("--eps-w", type=float, default=None, help="Target: GradPC with this relative parameter budget.")
@click.option("--save-target", type=click.Path(dir_okay=False, path_type=Path), help="Write the GradPC target's state dict here.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@_user_errors
def threshold(
    dataset_name: str,
    label_column: str | None,
    config_file: Path | None,
    model_name: str,
    l2: float,
    width: int | None,
    seed: int,
    target_file: Path | None,
    eps_w: float | None,
    save_target: Path | None,
    as_json: bool,
) -> None:
    """How much poison any attack needs to reach a target model (τ), without running an attack."""
    import json

    from audit.grid.threshold import compute_threshold_report, dataset_spec_for

    if (target_file is None) == (eps_w is None):
        raise AuditError("give exactly one target: --target FILE or --eps-w X")
    if not math.isfinite(l2) or l2 < 0:
        raise AuditError(f"--l2 must be ≥ 0 and finite (got {l2:g})")
    if eps_w is not None and (not math.isfinite(eps_w) or eps_w <= 0):
        raise AuditError(f"--eps-w must be > 0 and finite (got {eps_w:g})")
    if save_target is not None and eps_w is None:
        raise AuditError("--save-target writes the GradPC target: use it with --eps-w")
    if config_file is not None:
        from audit.config import load_config

        cfg = load_config(config_file)
        dataset_name, model_name = cfg.dataset.path or cfg.dataset.name, cfg.model.name
        report = compute_threshold_report(
            dataset_name,
            model_name,
            l2,
            width,
            seed,
            target_file,
            eps_w,
            save_target,
            dataset_spec=cfg.dataset,
            model_spec=cfg.model,
            training=cfg.training,
        )
    else:
        report = compute_threshold_report(
            dataset_name, model_name, l2, width, seed, target_file, eps_w, save_target, dataset_spec=dataset_spec_for(dataset_name, label_column)
        )
    if as_json:
        click.echo(json.dumps(report, indent=2, allow_nan=False, default=str))
        return
    t = report["threshold"]

    def tau(v: float | None) -> str:
        return "unreachable at any budget" if v is None else ("reachable at any ε > 0" if v <= 0 else f"{v:.4g}")

    lines = [
        f"dataset {report['dataset']}, model {report['model']}, ρ = {l2:g}, seed {seed}",
        f"target: {report['target']}",
        f"clean accuracy (test): {report['clean_test']:.2f}   target accuracy (test): {report['target_test']:.2f}",
        f"condition: {t['condition']}",
        f"a = ⟨W, g(μ)⟩ = {t['a']:.6g}   ‖W‖² = {t['w_norm_sq']:.6g}   ρ‖W‖² = {l2 * t['w_norm_sq']:.6g}",
        f"κ₂ = W(1/e) = {t['kappa_2']:.6f}   κ_c = W((c−1)/e) = {t['kappa_c']:.6f} (c = {t['n_classes']})",
        f"τ(2) = a/κ₂ = {tau(t['tau_2'])}   (the paper's indicative threshold)",
        f"τ(c) = a/κ_c = {tau(t['tau_c'])}   (necessary condition)",
        f"τ_ρ(2) = {tau(t['tau_rho_2'])}   τ_ρ(c) = {tau(t['tau_rho_c'])}",
    ]
    if t.get("eps_upper_2") is not None:
        lines.append(f"note: with ρ‖W‖² > κ₂ the target is reachable only for ε ≤ {t['eps_upper_2']:.4g}")
    if report.get("saved_target"):
        lines.append(f"target saved: {report['saved_target']}")
    click.echo("\n".join(lines))


@cli.command(name="list")
def list_() -> None:
    """The datasets, models, attacks and defenses this version knows."""
    from audit.attacks import ATTACKS
    from audit.data import BUILTIN, USER_FORMATS
    from audit.defenses import DEFENSES
    from audit.models import MODELS

    sections = [
        ("datasets", {**{k: v[1] for k, v in BUILTIN.items()}, **{k: f"user data: {v}" for k, v in USER_FORMATS.items()}}),
        ("models", MODELS),
        ("attacks", {k: v.description for k, v in ATTACKS.items()}),
        ("defenses", {k: v.description for k, v in DEFENSES.items()}),
    ]
    for title, entries in sections:
        click.echo(f"{title}:")
        width = max(len(k) for k in entries)
        for key, text in entries.items():
            click.echo(f"  {key:<{width}}  {text}")


def main() -> None:
    """The console entry point (see :class:`_OneLineGroup` for errors and Ctrl-C)."""
    code = cli.main(prog_name="poison-audit")
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
