from pathlib import Path

import numpy as np
import pytest

from audit.config import DatasetSpec, SplitSpec
from audit.data import BUILTIN, load_dataset
from audit.errors import AuditError

PAPER_SIZE = sorted(name for name, (_, text) in BUILTIN.items() if text.startswith("SYNTHETIC"))


@pytest.mark.parametrize("name", sorted(set(BUILTIN) - set(PAPER_SIZE)))
def test_builtins_load_with_consistent_splits(name):
    d = load_dataset(DatasetSpec(name=name))
    n = len(d.y_train) + len(d.y_val) + len(d.y_test)
    assert abs(len(d.y_val) - 0.2 * n) <= 1 and abs(len(d.y_test) - 0.2 * n) <= 1
    for x in (d.x_train, d.x_val, d.x_test):
        assert x.dtype == np.float32 and x.shape[1] == d.n_features and np.isfinite(x).all()
    assert d.lo.shape == d.hi.shape == (d.n_features,) and np.all(d.lo <= d.hi)
    assert np.all(d.x_train >= d.lo - 1e-6) and np.all(d.x_train <= d.hi + 1e-6)
    if d.task == "classification":
        assert set(np.unique(d.y_train)) == set(range(d.n_classes))
    else:
        assert d.n_classes is None and 0 <= d.y_train.min() and d.y_train.max() <= 1


def test_mnist5k_is_shuffled_scaled_and_split():
    d = load_dataset(DatasetSpec(name="mnist5k"))
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (3000, 1000, 1000)
    assert d.image_shape == (1, 28, 28) and d.x_train.max() == 1.0 and d.x_train.min() == 0.0
    counts = np.bincount(d.y_test, minlength=10)
    assert counts.min() > 70  # shuffled: the sorted-by-label source would give whole classes


def test_splits_are_deterministic_per_seed():
    a = load_dataset(DatasetSpec(name="wine", split=SplitSpec(seed=3)))
    b = load_dataset(DatasetSpec(name="wine", split=SplitSpec(seed=3)))
    c = load_dataset(DatasetSpec(name="wine", split=SplitSpec(seed=4)))
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)


def _npz(tmp_path: Path, **arrays) -> DatasetSpec:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return DatasetSpec(name="npz", path=str(path))


def test_npz_with_own_splits_and_box(tmp_path, rng):
    x = rng.normal(size=(40, 5))
    y = np.arange(40) % 3
    spec = _npz(tmp_path, x_train=x, y_train=y, x_val=x[:10], y_val=y[:10], x_test=x[:8], y_test=y[:8], lo=-5.0, hi=5.0)
    d = load_dataset(spec)
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (40, 10, 8)
    assert d.n_classes == 3 and np.all(d.lo == -5) and np.all(d.hi == 5)


def test_npz_images_keep_their_shape(tmp_path, rng):
    spec = _npz(tmp_path, x_train=rng.random((50, 1, 6, 6)), y_train=np.arange(50) % 2)
    d = load_dataset(spec)
    assert d.image_shape == (1, 6, 6) and d.n_features == 36


def test_csv_with_string_labels(tmp_path):
    path = tmp_path / "d.csv"
    rows = ["a,b,label"] + [f"{i},{i % 7},{'cat' if i % 2 else 'dog'}" for i in range(30)]
    path.write_text("\n".join(rows))
    d = load_dataset(DatasetSpec(name="csv", path=str(path), label_column="label"))
    assert d.task == "classification" and d.n_classes == 2 and d.n_features == 2


def test_image_folder(tmp_path, rng):
    from PIL import Image

    for c in ("cats", "dogs"):
        (tmp_path / c).mkdir()
        for i in range(10):
            Image.fromarray((rng.random((6, 6)) * 255).astype(np.uint8), mode="L").save(tmp_path / c / f"{i}.png")
    d = load_dataset(DatasetSpec(name="image_folder", path=str(tmp_path)))
    assert d.image_shape == (1, 6, 6) and d.n_classes == 2 and d.notes["classes"] == "cats, dogs"
    assert d.x_train.max() <= 1.0


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x_train": np.array([[0.0, np.nan]] * 10), "y_train": np.arange(10) % 2}, "features contain NaN or inf"),
        ({"x_train": np.array([[0.0, np.inf]] * 10), "y_train": np.arange(10) % 2}, "features contain NaN or inf"),
        ({"x_train": np.zeros((10, 2)), "y_train": np.arange(9) % 2}, "x has 10 rows but y has 9"),
        (
            {
                "x_train": np.zeros((10, 2)),
                "y_train": np.arange(10) % 2,
                "x_val": np.zeros((4, 3)),
                "y_val": np.zeros(4),
                "x_test": np.zeros((4, 2)),
                "y_test": np.zeros(4),
            },
            "x_val/y_val: x has 3 features, the training split has 2",
        ),
        (
            {
                "x_train": np.zeros((10, 2)),
                "y_train": np.arange(10) % 2,
                "x_val": np.zeros((4, 2)),
                "y_val": np.array([0, 1, 2, 1]),
                "x_test": np.zeros((4, 2)),
                "y_test": np.zeros(4),
            },
            "y_val: labels must lie in 0..1 (got 2)",
        ),
        ({"x_train": np.zeros((10, 2)), "y_train": np.array([0, 1, -1, 1, 0, 1, 0, 1, 0, 1])}, "labels must lie in 0..1 (got -1)"),
        ({"x_train": np.zeros((10, 2))}, "missing array 'y_train'"),
        ({"x_train": np.zeros((10, 2)), "y_train": np.arange(10) % 2, "x_val": np.zeros((4, 2))}, "'x_val' and 'y_val' must be given together"),
    ],
)
def test_bad_user_data(tmp_path, arrays, message):
    with pytest.raises(AuditError) as err:
        load_dataset(_npz(tmp_path, **arrays))
    assert message in str(err.value)


def test_missing_files_and_columns(tmp_path):
    with pytest.raises(AuditError, match="file not found"):
        load_dataset(DatasetSpec(name="npz", path=str(tmp_path / "none.npz")))
    with pytest.raises(AuditError, match="image folder not found"):
        load_dataset(DatasetSpec(name="image_folder", path=str(tmp_path / "none")))
    path = tmp_path / "d.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(AuditError, match="no column 'label'; columns: a, b"):
        load_dataset(DatasetSpec(name="csv", path=str(path), label_column="label"))


def test_images_of_different_sizes_are_rejected(tmp_path):
    from PIL import Image

    for c, size in (("a", 6), ("b", 7)):
        (tmp_path / c).mkdir()
        Image.new("L", (size, size)).save(tmp_path / c / "0.png")
    with pytest.raises(AuditError, match="images must share one size"):
        load_dataset(DatasetSpec(name="image_folder", path=str(tmp_path)))


def test_class_subset_and_split_counts():
    """The minimax paper's MNIST '0' vs '8': 512 train / 171 validation, labels relabelled 0 / 1 in the given order."""
    from audit.config import SplitSpec

    d = load_dataset(DatasetSpec(name="mnist5k", classes=[8, 0], split=SplitSpec(val=171, test=317)))
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (512, 171, 317)
    assert d.n_classes == 2 and d.notes["classes"] == "8, 0"
    assert set(np.unique(d.y_train)) == {0, 1}
    full = load_dataset(DatasetSpec(name="mnist5k"))
    eights = full.x_train[full.y_train == 8]
    assert any(np.array_equal(d.x_train[0], e) for e in eights) == (d.y_train[0] == 0)


@pytest.mark.parametrize("spec, message", [
    ({"name": "mnist5k", "classes": [0, 11]}, r"dataset.classes: labels \[11\] do not occur"),
    ({"name": "diabetes", "classes": [0, 1]}, "dataset.classes: only for classification data"),
    ({"name": "wine", "split": {"val": 100, "test": 78}}, "100 validation \\+ 78 test points leave no training data of 178"),
])  # fmt: skip
def test_class_subset_and_count_errors(spec, message):
    with pytest.raises(AuditError, match=message):
        load_dataset(DatasetSpec(**spec))


@pytest.mark.parametrize("data, message", [
    ({"name": "wine", "classes": [0, 0]}, r"dataset.classes: labels repeat"),
    ({"name": "wine", "split": {"val": 2.5}}, r"split.val: a fraction in \(0, 1\) or a whole count ≥ 1 \(got 2.5\)"),
])  # fmt: skip
def test_class_subset_and_count_config_errors(data, message):
    from audit.config import parse_config

    with pytest.raises(AuditError, match=message):
        parse_config({"dataset": data})


# ----------------------------------------------------------------------------- paper-size synthetic data (issue 20)
def test_paper_size_builtins_are_the_two_synthetic_sets():
    assert PAPER_SIZE == ["cifar10_synthetic", "mnist60k_synthetic"]


def test_jitter_keeps_the_originals_then_moves_each_copy_but_keeps_its_digit():
    """The mnist60k_synthetic recipe on 1000 digits (the full set is the slow tests below)."""
    from audit.data import _jitter, _mnist5k

    x5, y5, _ = _mnist5k(0)
    src = np.asarray(x5[::5], np.float32)  # 1000 digits, every class
    labels = np.asarray(y5[::5])
    out = _jitter(src.reshape(-1, 1, 28, 28), copies=3, seed=20_000, chunk=300).reshape(3000, -1)
    again = _jitter(src.reshape(-1, 1, 28, 28), copies=3, seed=20_000, chunk=300).reshape(3000, -1)
    np.testing.assert_array_equal(out, again)  # seeded: the same copies every time
    np.testing.assert_array_equal(out[:1000], src)
    assert out.min() >= 0 and out.max() <= 1 and out.dtype == np.float32
    copy = out[2000:]
    assert np.abs(copy - src).mean(axis=1).min() > 0.005
    d = (copy**2).sum(1)[:, None] - 2 * copy @ src.T + (src**2).sum(1)[None]
    d[np.arange(1000), np.arange(1000)] = np.inf
    assert (labels[d.argmin(1)] == labels).mean() > 0.6  # 1-NN over the other originals still reads its digit


@pytest.fixture(scope="module")
def mnist60k_raw():
    from audit.data import _mnist60k_synthetic

    return _mnist60k_synthetic(0)  # ~15 s: generated once for the tests below


@pytest.mark.slow
def test_mnist60k_synthetic_has_full_mnists_shape_and_its_first_copy_is_mnist5k(mnist60k_raw):
    from audit.data import _mnist5k

    x, y, meta = mnist60k_raw
    x5, y5, _ = _mnist5k(0)
    assert x.shape == (70_000, 784) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert np.array_equal(np.bincount(y), np.full(10, 7000))
    np.testing.assert_allclose(x[:5000], x5, atol=1e-7)  # the originals, then 13 jittered copies of each
    copy = x[5000 * 3 : 5000 * 4]
    assert np.array_equal(y[5000 * 3 : 5000 * 4], y5)
    moved = np.abs(copy - x5).mean(axis=1)
    assert moved.min() > 0.005  # every copy is jittered …
    sample, others = copy[:1000], x5.astype(np.float32)
    d = (sample**2).sum(1)[:, None] - 2 * sample @ others.T + (others**2).sum(1)[None]
    d[np.arange(1000), np.arange(1000)] = np.inf  # leave its own source out
    assert (y5[d.argmin(1)] == y5[:1000]).mean() > 0.7  # … and still its digit: 1-NN over the other originals (78 % seen; chance 10 %)
    assert "synthetic" in meta["synthetic"] and meta["split"] == (5000, 5000)


@pytest.mark.slow
def test_synthetic_sets_split_to_the_papers_sizes_and_say_they_are_synthetic(mnist60k_raw, monkeypatch):
    monkeypatch.setitem(BUILTIN, "mnist60k_synthetic", (lambda seed: mnist60k_raw, BUILTIN["mnist60k_synthetic"][1]))
    d = load_dataset(DatasetSpec(name="mnist60k_synthetic"))
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (60_000, 5000, 5000) and d.image_shape == (1, 28, 28)
    assert d.describe()["synthetic"].startswith("mnist60k_synthetic") and "accuracies and damage do not" in d.describe()["synthetic"]
    d = load_dataset(DatasetSpec(name="mnist60k_synthetic", split={"val": 0.1, "test": 0.1}))  # a split the config gives wins
    assert len(d.y_val) == 7000


@pytest.mark.slow  # ~20 s: generating 60 000 images and fitting on 3000
def test_cifar10_synthetic_has_cifars_shape_and_something_to_learn():
    from sklearn.linear_model import LogisticRegression

    d = load_dataset(DatasetSpec(name="cifar10_synthetic"))
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (50_000, 5000, 5000)
    assert d.image_shape == (3, 32, 32) and d.n_features == 3072 and d.n_classes == 10
    assert d.describe()["synthetic"].startswith("cifar10_synthetic")
    model = LogisticRegression(max_iter=200).fit(d.x_train[:3000], d.y_train[:3000])
    accuracy = model.score(d.x_test[:2000], d.y_test[:2000])
    assert 0.3 < accuracy < 0.999, accuracy  # learnable (chance is 0.1), not trivial


def test_a_synthetic_dataset_is_labelled_in_the_report_and_summary(tmp_path, monkeypatch):
    import json

    from audit.config import parse_config
    from audit.data import SYNTHETIC_NOTE, _breast_cancer
    from audit.grid.runner import run_audit
    from audit.report import write_report
    from tests.conftest import tiny_config

    def fake(seed):
        x, y, meta = _breast_cancer(seed)
        return x, y, {**meta, "synthetic": f"fake_synthetic — <b>test</b>; {SYNTHETIC_NOTE}"}

    monkeypatch.setitem(BUILTIN, "fake_synthetic", (fake, "SYNTHETIC test-only"))
    run_dir = run_audit(parse_config(tiny_config(dataset={"name": "fake_synthetic"}, candidates={"l2": [0.01]})), output_dir=tmp_path,
                        progress=False)  # fmt: skip
    html = write_report(run_dir).read_text()
    assert "<strong>Synthetic data.</strong> fake_synthetic — &lt;b&gt;test&lt;/b&gt;" in html
    assert json.loads((run_dir / "summary.json").read_text())["dataset"]["synthetic"].startswith("fake_synthetic")
