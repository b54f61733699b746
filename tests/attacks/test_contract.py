"""Every registered attack keeps the one contract: ART base class, poison(x, y) → points to add
(or, for an attack that modifies the training set, the poisoned training set: n points)."""

import json

import numpy as np
import pytest
import torch
from art.attacks.attack import PoisoningAttack

from audit.attacks import ATTACKS, AttackContext, LabelFlip
from audit.config import DatasetSpec, ModelSpec, TrainingSpec
from audit.data import load_dataset
from audit.errors import AuditError
from audit.models import build_victim

# One default parameter set per attack for the contract test (extend when an attack lands).


SETTINGS = {"classification": ("wine", "logreg"), "regression": ("diabetes", "ridge")}
_CACHE: dict = {}


def _setting(task, kind="torch"):
    if (task, kind) not in _CACHE:
        name, model = SETTINGS[task]
        d = load_dataset(DatasetSpec(name=name))
        estimator = None
        if kind == "sklearn":
            from sklearn.linear_model import LogisticRegression, Ridge

            estimator = LogisticRegression(max_iter=500) if task == "classification" else Ridge()
        victim = build_victim(ModelSpec(name=model), TrainingSpec(epochs=100), d, torch.device("cpu"), model_obj=estimator)
        assert victim.kind == kind
        _CACHE[(task, kind)] = (d, victim, victim.fit(d.x_train, d.y_train, {"l2": 0.01}, 0))
    return _CACHE[(task, kind)]


def _cases():
    for name, cls in sorted(ATTACKS.items()):
        for task in cls.tasks:
            for params in map(dict, ATTACKS[name].smoke_params):
                if task == "regression" and params.get("target") == "label_flip":
                    continue  # a label-flip target model exists for classification only
                if task == "regression" and params.get("defense", "none") != "none":
                    continue  # the sanitisers are classifiers' (refused for ridge: tests/test_certificate.py)
                yield pytest.param(name, params, task, id=f"{name}-{task}-{params}")


def _sklearn_cases():
    for case in _cases():
        name, params, task = case.values
        if "sklearn" in ATTACKS[name].victims:
            yield pytest.param(name, params, task, id=case.id)


@pytest.mark.parametrize("name, params, task", list(_sklearn_cases()))
def test_contract_on_a_scikit_learn_victim(name, params, task):
    """Every attack that claims scikit-learn victims runs on one: shapes, box, determinism."""
    d, victim, fitted = _setting(task, "sklearn")
    ctx = AttackContext.of(d, victim, fitted, {"l2": 0.01}, 0.1, seed=3)
    x_p, y_p = ATTACKS[name].for_cell(params, ctx).poison(d.x_train, d.y_train)
    n_p = len(d.y_train) if ATTACKS[name].modifies else round(0.1 * len(d.y_train))
    assert x_p.shape == (n_p, d.n_features) and y_p.shape == (n_p,)
    assert np.all(x_p >= d.lo) and np.all(x_p <= d.hi)
    x_q, y_q = ATTACKS[name].for_cell(params, ctx).poison(d.x_train, d.y_train)
    np.testing.assert_array_equal(x_p, x_q)
    np.testing.assert_array_equal(y_p, y_q)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attacks_smoke_params_are_valid_parameters(name):
    """The settings the contract runs (the class's ``smoke_params``) are settings its ``Params`` accept."""
    cls = ATTACKS[name]
    assert cls.smoke_params, f"{name} declares no smoke_params"
    for params in cls.smoke_params:
        cls.Params.model_validate(dict(params))


@pytest.mark.parametrize("name, params, task", list(_cases()))
@pytest.mark.parametrize("budget", [0.05, 0.3])
def test_contract(name, params, task, budget):
    d, victim, fitted = _setting(task)
    attack = ATTACKS[name].for_cell(params, AttackContext.of(d, victim, fitted, {"l2": 0.01}, budget, seed=3))
    assert isinstance(attack, PoisoningAttack)
    x_in, y_in = d.x_train.copy(), d.y_train.copy()
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    x_p, y_p = attack.poison(d.x_train, d.y_train)
    assert torch.equal(torch.get_rng_state(), torch_state), "the attack touched torch's global RNG"
    assert np.array_equal(np.random.get_state()[1], numpy_state[1]), "the attack touched numpy's global RNG"
    n_p = len(d.y_train) if ATTACKS[name].modifies else round(budget * len(d.y_train))
    assert x_p.shape == (n_p, d.n_features) and y_p.shape == (n_p,)
    assert np.all(x_p >= d.lo) and np.all(x_p <= d.hi)
    if task == "classification":
        assert y_p.min() >= 0 and y_p.max() < d.n_classes
    np.testing.assert_array_equal(d.x_train, x_in)  # the input is not modified
    np.testing.assert_array_equal(d.y_train, y_in)
    assert attack.diagnostics["n_poison"] == n_p
    assert isinstance(attack.diagnostics, ATTACKS[name].Diagnostics)  # typed, as the class declares
    stored = json.loads(json.dumps(attack.diagnostics.to_json()))
    assert ATTACKS[name].Diagnostics.from_json(stored).to_json() == stored  # stored as JSON and read back
    again = ATTACKS[name].for_cell(params, AttackContext.of(d, victim, fitted, {"l2": 0.01}, budget, seed=3))
    x_q, y_q = again.poison(d.x_train, d.y_train)
    np.testing.assert_array_equal(x_p, x_q)  # same seed, same poisons
    np.testing.assert_array_equal(y_p, y_q)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_contract_rejects_bad_input(name):
    d, victim, fitted = _setting(ATTACKS[name].tasks[0])
    params = dict(ATTACKS[name].smoke_params[0])
    attack = ATTACKS[name].for_cell(params, AttackContext.of(d, victim, fitted, {}, 0.1, seed=0))
    with pytest.raises(AuditError, match=r"expected x \(n, d\) and y \(n,\)"):
        attack.poison(d.x_train, d.y_train[:-1])
    bad = d.x_train.copy()
    bad[0, 0] = np.nan
    with pytest.raises(AuditError, match="x contains NaN or inf"):
        attack.poison(bad, d.y_train)
    with pytest.raises(AuditError, match=r"budget' parameter of .* must be a float in \(0, 1\]. Got 1.7 instead"):
        ATTACKS[name].for_cell(params, AttackContext.of(d, victim, fitted, {}, 1.7, seed=0))


def test_base_enforces_the_contract():
    """A subclass without _run cannot be built; one that overrides poison cannot even be defined."""
    from art.attacks.attack import PoisoningAttackBlackBox

    from audit.attacks import AuditAttack
    from audit.attacks.base import ThreatModel

    class NoRun(AuditAttack, PoisoningAttackBlackBox):
        name = "no_run"
        description = "missing its algorithm"
        threat = ThreatModel(white_box=False, capability="injects nothing")
        _estimator_requirements = ()

        @classmethod
        def for_cell(cls, params, ctx):
            return cls(budget=ctx.budget)

    with pytest.raises(TypeError, match="abstract"):
        NoRun(budget=0.1)
    with pytest.raises(TypeError, match="must not override poison"):

        class OwnPoison(NoRun):
            def poison(self, x, y=None):
                return x, y


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_constructor_is_keyword_only(name):
    """Everything but the estimator is passed by keyword (one way to call every attack)."""
    import inspect

    signature = inspect.signature(ATTACKS[name].__init__)
    positional = [p.name for p in signature.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"]
    assert positional == ["estimator"], positional
    assert signature.parameters["budget"].kind is inspect.Parameter.KEYWORD_ONLY


def test_diagnostics_refuse_undeclared_fields():
    """A misspelt diagnostic is an error where it is written, not a blank report section later."""
    attack = LabelFlip(budget=0.1, n_classes=2)
    with pytest.raises(AttributeError, match="LabelFlipDiagnostics declares no diagnostic 'mean_fliped_loss'"):
        attack.diagnostics.update(mean_fliped_loss=1.0)
    attack.diagnostics.update(variant="random")
    assert attack.diagnostics["variant"] == "random" and "selection" not in attack.diagnostics
    with pytest.raises(KeyError):
        attack.diagnostics["selection"]
