"""The notebook API: audit.run_audit returns a result object, not only a path."""

import json

import numpy as np
import pytest
import torch

import audit
from audit.config import parse_config
from audit.errors import AuditError
from audit.report import write_report
from tests.conftest import tiny_config


def test_run_audit_returns_the_results(tmp_path):
    result = audit.run_audit(parse_config(tiny_config()), output_dir=tmp_path, progress=False)
    assert isinstance(result, audit.AuditResult)
    assert result.run_dir == tmp_path / "tiny" and (result / "results.sqlite").is_file()
    write_report(result)  # path-like
    on_disk = json.loads((result / "summary.json").read_text())
    assert result.summary["recommendation"] == on_disk["recommendation"]
    assert result.recommendation["hyperparameters"] in ({"l2": 0.0}, {"l2": 0.01})
    x_p, y_p = result.poisons("lf_adv", 0.1)
    n = on_disk["dataset"]["n_train"]
    assert x_p.shape == (round(0.1 * n), on_disk["dataset"]["n_features"]) and y_p.shape == (round(0.1 * n),)
    with pytest.raises(AuditError, match="no attack 'nope' in this audit; its attacks are lf_random, lf_adv"):
        result.poisons("nope", 0.1)
    with pytest.raises(AuditError, match="no poisons stored for lf_adv at ε = 0.2"):
        result.poisons("lf_adv", 0.2)
    est = result.recommended_estimator(clip_values=(0.0, 1.0))
    data = result.plan.dataset
    accuracy = 100 * np.mean(est.predict(data.x_test).argmax(1) == data.y_test)
    rec = [c for c in on_disk["candidates"] if c["hyperparameters"] == result.recommendation["hyperparameters"]][0]
    assert accuracy == pytest.approx(rec["clean_test"], abs=1e-6)  # the same seed and procedure as the audit's clean model
    written = result.export(("json",))
    assert [p.name for p in written] == ["record.json", "manifest.json"]
    assert json.loads(written[0].read_text())["facts"]["fingerprint"] == on_disk["fingerprint"]


def test_run_audit_leaves_the_global_generators_alone(tmp_path):
    torch.manual_seed(123)
    np.random.seed(5)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    audit.run_audit(parse_config(tiny_config(defenses=["none", "loss_filter"])), output_dir=tmp_path, progress=False)
    assert torch.equal(torch_state, torch.get_rng_state())
    assert np.array_equal(numpy_state[1], np.random.get_state()[1])
