"""Back-gradient poisoning (carnerero-cano-2021): the paper's algorithm and its strategies, one module each.

- :mod:`.attack` — :class:`BackGradient`, the attack as the audit runs it: starts, restarts, batches, the ascent;
- :mod:`.params` — its parameters, the paper's defaults (Table 2);
- :mod:`.hypergradients` — how ``∇_{X_p} A`` is computed: reverse mode through T steps (the paper's) or implicit
  at a convex victim's optimum;
- :mod:`.step_rules` — how poisons move along it: the paper's fixed steps or a backtracking line search;
- :mod:`.objectives` — the feasible set (box ∩ a sanitiser's region) and the evasion term against the loss filter;
- :mod:`.regularisation` — λ learned on clean data (the defender's side of the minimax).
"""

from audit.attacks.back_gradient.attack import EVADE_SCALES, BackGradient, BackGradientDiagnostics, flipped_labels
from audit.attacks.back_gradient.params import BackGradientParams
from audit.attacks.back_gradient.regularisation import learn_log_l2

__all__ = ["EVADE_SCALES", "BackGradient", "BackGradientDiagnostics", "BackGradientParams", "flipped_labels", "learn_log_l2"]
