"""Test-only attacks a Ray worker registers at start (``worker_process_setup_hook``) and the worker pool receives: one that
raises at a large budget, one whose worker process dies (``os._exit``) at a large budget."""

from __future__ import annotations

import os

from audit import attacks as attacks_module
from audit.attacks import LabelFlip


class Exploding(LabelFlip):
    name = "exploding"

    def _run(self, task):
        if self.budget > 0.2:
            raise RuntimeError("solver diverged at large budget")
        return super()._run(task)


class Crashing(LabelFlip):
    name = "crashing"

    def _run(self, task):
        if self.budget > 0.2:
            os._exit(17)  # the worker process dies, as on an OOM kill
        return super()._run(task)


def register() -> None:
    attacks_module.ATTACKS.setdefault("exploding", Exploding)
    attacks_module.ATTACKS.setdefault("crashing", Crashing)


class Recovered(LabelFlip):
    """``crashing`` once its cause is gone: the run resumed after a worker died."""

    name = "crashing"
