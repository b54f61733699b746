from pathlib import Path

import numpy as np
import pytest

from audit.config import DatasetSpec, SplitSpec
from audit.data import BUILTIN, load_dataset
from audit.errors import AuditError


@pytest.mark.parametrize("name", sorted(BUILTIN))
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
        ({"x_train": np.zeros((10, 2)), "y_train": np.arange(10) % 2, "x_val": np.zeros((4, 3)), "y_val": np.zeros(4),
          "x_test": np.zeros((4, 2)), "y_test": np.zeros(4)}, "x_val/y_val: x has 3 features, the training split has 2"),
        ({"x_train": np.zeros((10, 2)), "y_train": np.arange(10) % 2, "x_val": np.zeros((4, 2)), "y_val": np.array([0, 1, 2, 1]),
          "x_test": np.zeros((4, 2)), "y_test": np.zeros(4)}, "y_val: labels must lie in 0..1 (got 2)"),
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
