"""
Frozen-embedding evaluation: k-NN accuracy, linear-probe accuracy, effective rank and the Epps-Pulley statistic of
image embeddings, as an `evaluate` module.

Self-contained (numpy, torch and scikit-learn only), so that it loads with `evaluate.load(<this folder>)` offline and
can be pushed to the Hub unchanged. It is the one implementation of the protocol in the LeJEPA project: the
project's evaluation library (`trainer.evaluation`) and the `lejepa-evaluate` command compute through it.
"""

from __future__ import annotations

import math
import warnings

import datasets
import evaluate
import numpy as np
import torch
from torch import nn

_CITATION = """\
@article{balestriero2025lejepa,
  title={LeJEPA: Provable and Scalable Self-Supervised Learning Without the Heuristics},
  author={Balestriero, Randall and LeCun, Yann},
  journal={arXiv preprint arXiv:2511.08544},
  year={2025}
}
"""

# The protocol's settings (the keyword arguments of `compute`) and their defaults, and the fixed settings of the
# probes: the one definition, which the descriptions below, the functions and the LeJEPA project's evaluation library
# (its defaults, command-line options and model-card text) read.
DEFAULTS = {
    "knn_k": 20,
    "knn_temperature": 0.07,
    "linear_probe": "logistic_regression",
    "linear_probe_epochs": 100,
    "num_slices": 1024,
    "num_knots": 17,
    "t_max": 3.0,
    "seed": 0,
}
LINEAR_PROBES = ("logistic_regression", "layernorm_linear")
LOGISTIC_REGRESSION = {"C": 1.0, "max_iter": 2000}
LAYERNORM_LINEAR = {"batch_size": 256, "learning_rate": 1e-2, "weight_decay": 1e-4}

_DESCRIPTION = """\
Evaluates frozen image embeddings on a labelled task: each example is one embedding with its label, in the `train` or
the `eval` split.
- k-NN: each eval embedding is classified by its `knn_k` (default {knn_k}) most similar train embeddings (cosine),
  whose votes are weighted by `exp(similarity / knn_temperature)` (default {knn_temperature:g}, the protocol of DINO;
  0 gives a plain majority vote; ties go to the smallest label).
- Linear probe: multinomial logistic regression (scikit-learn, L-BFGS, L2 with C = {C:g}) on embeddings standardised
  with the train split's mean and standard deviation (`linear_probe="logistic_regression"`, the default), or
  LayerNorm + Linear trained with AdamW on the frozen embeddings (`linear_probe="layernorm_linear"`).
- Effective rank of the eval embeddings' covariance: `exp` of the entropy of its normalised eigenvalues, in [1, D].
- Epps-Pulley statistic (SIGReg's, against a standard normal, times N) of the raw eval embeddings projected on
  `num_slices` random unit directions (numpy's `default_rng(seed)`), averaged over the directions, in float64.
""".format(**DEFAULTS, **LOGISTIC_REGRESSION)

_KWARGS_DESCRIPTION = """
Args:
    embeddings (`list` of `list` of `float`): one embedding per example, all of the same size.
    labels (`list` of `int`): the class of each example.
    splits (`list` of `str`): `"train"` or `"eval"` for each example.
    knn_k (`int`, *optional*, defaults to {knn_k}): neighbours of the k-NN.
    knn_temperature (`float`, *optional*, defaults to {knn_temperature:g}): temperature of the k-NN votes; 0 for a
        majority vote.
    linear_probe (`str`, *optional*, defaults to `"{linear_probe}"`): or `"layernorm_linear"`.
    linear_probe_epochs (`int`, *optional*, defaults to {linear_probe_epochs}): epochs of the `"layernorm_linear"`
        probe.
    num_slices (`int`, *optional*, defaults to {num_slices}): random directions of the Epps-Pulley statistic.
    num_knots (`int`, *optional*, defaults to {num_knots}): trapezoid knots on `[0, t_max]`.
    t_max (`float`, *optional*, defaults to {t_max:g}): end of the integration range.
    seed (`int`, *optional*, defaults to {seed}): seed of the probe and of the directions.
Returns:
    knn_accuracy, linear_probe_accuracy (in [0, 1]), effective_rank (in [1, D]), epps_pulley (>= 0), and the sizes
    (embedding_size, num_classes, num_train_samples, num_eval_samples).
Examples:
    >>> import evaluate
    >>> module = evaluate.load("trainer/metrics/frozen_embedding_eval")  # doctest: +SKIP
    >>> results = module.compute(embeddings=[[0.0, 1.0], [1.0, 0.0], [0.1, 0.9], [0.9, 0.2]], labels=[0, 1, 0, 1],
    ...                          splits=["train", "train", "eval", "eval"], knn_k=1)  # doctest: +SKIP
    >>> results["knn_accuracy"]  # doctest: +SKIP
    1.0
""".format(**DEFAULTS)


def knn_predict(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    query_embeddings: np.ndarray,
    k: int = DEFAULTS["knn_k"],
    temperature: float | None = DEFAULTS["knn_temperature"],
    num_classes: int | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """k-nearest-neighbour labels `(Q,)` of `query_embeddings` `(Q, D)` under cosine similarity to the
    `train_embeddings` `(N, D)` with integer `train_labels` `(N,)`; votes weighted by `exp(similarity / temperature)`
    (`None` or 0: one vote each), ties to the smallest label."""
    if k < 1:
        raise ValueError(f"`k` must be positive, got {k}.")
    train = nn.functional.normalize(torch.as_tensor(train_embeddings, dtype=torch.float32), dim=1)
    queries = nn.functional.normalize(torch.as_tensor(query_embeddings, dtype=torch.float32), dim=1)
    labels = torch.as_tensor(train_labels, dtype=torch.long)
    num_classes = num_classes or int(labels.max()) + 1
    k = min(k, train.shape[0])
    predictions = []
    for start in range(0, queries.shape[0], batch_size):
        similarity = queries[start : start + batch_size] @ train.T  # (q, N)
        top_similarity, top_index = similarity.topk(k, dim=1)  # (q, k)
        weights = (top_similarity / temperature).exp() if temperature else torch.ones_like(top_similarity)
        votes = torch.zeros(top_index.shape[0], num_classes).scatter_add_(1, labels[top_index], weights)
        predictions.append(votes.argmax(dim=1))  # first maximum: ties go to the smallest label
    return torch.cat(predictions).numpy()


def _train_layernorm_linear(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    num_classes: int,
    epochs: int = DEFAULTS["linear_probe_epochs"],
    batch_size: int = LAYERNORM_LINEAR["batch_size"],
    learning_rate: float = LAYERNORM_LINEAR["learning_rate"],
    weight_decay: float = LAYERNORM_LINEAR["weight_decay"],
    seed: int = DEFAULTS["seed"],
) -> nn.Module:
    """Trains LayerNorm + Linear with AdamW and a cosine schedule on frozen embeddings (cross-entropy)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(train_embeddings, dtype=torch.float32)
    y = torch.as_tensor(train_labels, dtype=torch.long)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = nn.Sequential(nn.LayerNorm(x.shape[1]), nn.Linear(x.shape[1], num_classes))
    steps_per_epoch = math.ceil(x.shape[0] / batch_size)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=learning_rate, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    probe.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        for start in range(0, x.shape[0], batch_size):
            index = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(probe(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return probe.eval()


def linear_probe_predict(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    query_embeddings: np.ndarray,
    method: str = DEFAULTS["linear_probe"],
    epochs: int = DEFAULTS["linear_probe_epochs"],
    seed: int = DEFAULTS["seed"],
) -> tuple[np.ndarray, bool]:
    """Linear-probe labels `(Q,)` of `query_embeddings` (see the module description), and whether the logistic
    regression converged (always `True` for `"layernorm_linear"`)."""
    if len(np.unique(train_labels)) < 2:
        raise ValueError("A linear probe needs at least two classes in the training split.")
    if method == "logistic_regression":
        try:
            from sklearn.exceptions import ConvergenceWarning
            from sklearn.linear_model import LogisticRegression
            from sklearn.preprocessing import StandardScaler
            from threadpoolctl import threadpool_limits
        except ImportError as error:
            raise ImportError(
                "The logistic-regression probe needs scikit-learn: `pip install 'lejepa-hf[eval]'` (or `pip install "
                "scikit-learn`)."
            ) from error

        scaler = StandardScaler().fit(train_embeddings)
        classifier = LogisticRegression(**LOGISTIC_REGRESSION, random_state=seed)
        # One BLAS thread: the products are small, and on a busy CPU more threads spin (measured in the LeJEPA
        # project: 10x the time for a 3072-dimensional raw-pixel fit on 2 loaded cores)
        with warnings.catch_warnings(record=True) as caught, threadpool_limits(limits=1, user_api="blas"):
            warnings.simplefilter("always", ConvergenceWarning)
            classifier.fit(scaler.transform(train_embeddings), train_labels)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        return classifier.predict(scaler.transform(query_embeddings)), converged
    if method == "layernorm_linear":
        num_classes = int(np.max(train_labels)) + 1
        probe = _train_layernorm_linear(train_embeddings, train_labels, num_classes, epochs=epochs, seed=seed)
        with torch.no_grad():
            logits = probe(torch.as_tensor(query_embeddings, dtype=torch.float32))
        return logits.argmax(dim=1).numpy(), True
    raise ValueError(f"Unknown linear probe {method!r}; choose one of {', '.join(LINEAR_PROBES)}.")


def effective_rank(embeddings: np.ndarray) -> float:
    """`exp` of the entropy of the normalised covariance eigenvalues of `embeddings` `(N, D)`, `N >= 2`: `D` for an
    isotropic covariance, 1 when all the variance lies along one direction (and for constant embeddings)."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"`embeddings` must have shape (N, D) with N >= 2, got {x.shape}.")
    x = x - x.mean(axis=0, keepdims=True)
    eigenvalues = np.clip(np.linalg.eigvalsh(x.T @ x / (x.shape[0] - 1)), 0.0, None)
    total = eigenvalues.sum()
    if total <= 0:
        return 1.0
    p = eigenvalues[eigenvalues > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def epps_pulley(
    embeddings: np.ndarray,
    num_slices: int = DEFAULTS["num_slices"],
    num_knots: int = DEFAULTS["num_knots"],
    t_max: float = DEFAULTS["t_max"],
    seed: int = DEFAULTS["seed"],
    slices_per_chunk: int = 64,
) -> float:
    """Mean over `num_slices` random unit directions of the Epps-Pulley statistic of the projected `embeddings`
    `(N, D)`: `N * integral |ecf(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt` on `[-t_max, t_max]`, trapezoid rule on
    `num_knots` knots of `[0, t_max]` (weights doubled: the integrand is even), in float64."""
    x = np.asarray(embeddings, dtype=np.float64)
    directions = np.random.default_rng(seed).standard_normal((x.shape[1], num_slices))
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)
    t = np.linspace(0.0, t_max, num_knots)
    weights = np.full(num_knots, 2.0 * t_max / (num_knots - 1))
    weights[0] = weights[-1] = t_max / (num_knots - 1)
    phi = np.exp(-0.5 * t**2)
    statistics = []
    for start in range(0, num_slices, slices_per_chunk):
        projected = x @ directions[:, start : start + slices_per_chunk]  # (N, m)
        angles = projected[:, :, None] * t  # (N, m, T)
        error = (np.cos(angles).mean(axis=0) - phi) ** 2 + np.sin(angles).mean(axis=0) ** 2  # (m, T)
        statistics.append(x.shape[0] * (error @ (weights * phi)))
    return float(np.concatenate(statistics).mean())


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FrozenEmbeddingEval(evaluate.Metric):
    """k-NN and linear-probe accuracy, effective rank and Epps-Pulley statistic of frozen embeddings."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "embeddings": datasets.Sequence(datasets.Value("float32")),
                    "labels": datasets.Value("int64"),
                    "splits": datasets.Value("string"),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2511.08544"],
        )

    def _compute(self, embeddings, labels, splits, **settings) -> dict:
        """The metrics of the examples with `settings` (see `DEFAULTS`) instead of the defaults."""
        unknown_settings = sorted(set(settings) - set(DEFAULTS))
        if unknown_settings:
            raise ValueError(f"Unknown settings {unknown_settings}; the settings are {', '.join(DEFAULTS)}.")
        settings = {**DEFAULTS, **settings}
        x = np.asarray(embeddings, dtype=np.float32)
        y, split = np.asarray(labels), np.asarray(splits)
        unknown = sorted(set(split.tolist()) - {"train", "eval"})
        if unknown:
            raise ValueError(f"`splits` must be 'train' or 'eval', got {unknown}.")
        train, query = split == "train", split == "eval"
        if train.sum() == 0 or query.sum() < 2:
            raise ValueError(f"Need train examples and at least 2 eval examples, got {train.sum()} and {query.sum()}.")
        classes, codes = np.unique(y, return_inverse=True)  # labels mapped to 0..C-1 over both splits
        codes = codes.reshape(-1)
        train_x, train_y = x[train], codes[train]
        knn = knn_predict(train_x, train_y, x[query], settings["knn_k"], settings["knn_temperature"], len(classes))
        linear, converged = linear_probe_predict(
            train_x, train_y, x[query], settings["linear_probe"], settings["linear_probe_epochs"], settings["seed"]
        )
        return {
            "knn_accuracy": float(np.mean(knn == codes[query])),
            "linear_probe_accuracy": float(np.mean(linear == codes[query])),
            "linear_probe_converged": converged,
            "effective_rank": effective_rank(x[query]),
            "epps_pulley": epps_pulley(
                x[query], settings["num_slices"], settings["num_knots"], settings["t_max"], settings["seed"]
            ),
            "embedding_size": int(x.shape[1]),
            "num_classes": int(len(classes)),
            "num_train_samples": int(train.sum()),
            "num_eval_samples": int(query.sum()),
        }
