"""The audit grid: plan the cells, run them (resumably) into the run directory's store.

:func:`run_audit` runs or resumes an audit; :class:`~audit.grid.cells.Cell` is one grid
cell; :class:`~audit.grid.store.Store` is the SQLite result store; the λ-under-attack
stage is :mod:`~audit.grid.minimax`.
"""

from audit.grid.runner import plan_audit, run_audit

__all__ = ["plan_audit", "run_audit"]
