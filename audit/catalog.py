"""The names of the built-in models, with a line each: what a config may name (no heavy imports, so a
config can be checked before torch is loaded)."""

from __future__ import annotations

MODELS: dict[str, str] = {
    "logreg": "logistic regression, softmax cross-entropy (binary and multiclass), parameters in `linear`",
    "mlp": "fully connected network, `depth` hidden layers of `width` units, leaky ReLU (0.2)",
    "cnn": "two 3×3 conv layers (`width`, 2·`width` channels), max-pool, FC 128 (image data)",
    "ridge": "linear regression with the L2 term (ridge), squared loss ½(y − f)²",
    "lasso": "linear regression with an L1 term λ₁‖w‖₁ (axis `l1`), trained by FISTA",
    "elastic_net": "linear regression with L1 (`l1`) and L2 (`l2`) terms, trained by FISTA",
    "user": "your factory `package.module:function` returning an nn.Module, an ART PyTorchClassifier or a scikit-learn LogisticRegression/Ridge",
}
