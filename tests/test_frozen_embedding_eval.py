"""The `evaluate` module `trainer/metrics/frozen_embedding_eval`: loaded offline in a process that cannot import this
project, the same numbers as the evaluation library, and embeddings gathered over processes as `evaluate` does."""

import json
import multiprocessing

import numpy as np
import pytest
from conftest import run_without_package

from trainer.evaluation import compute_embedding_metrics
from trainer.metrics import FROZEN_EMBEDDING_EVAL_PATH, load_frozen_embedding_eval

SETTINGS = {"knn_k": 5, "num_slices": 32, "seed": 3}


def fixed_embeddings() -> dict:
    """Two noisy clusters per class in 8 dimensions: 120 train and 60 eval examples of 3 classes."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 180)
    centers = rng.normal(size=(3, 8)) * 2
    embeddings = (centers[labels] + rng.normal(size=(180, 8))).astype(np.float32)
    return {"embeddings": embeddings, "labels": labels, "splits": ["train"] * 120 + ["eval"] * 60}


def test_module_against_independent_references():
    """Every metric of the module against an implementation that is not the module's: scikit-learn's k-NN (majority
    vote, cosine) and logistic regression, the effective rank from numpy's eigenvalues, and the Epps-Pulley statistic
    written from its definition (`test_sigreg.epps_pulley_reference`) on the same numpy directions."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler
    from test_sigreg import epps_pulley_reference

    data = fixed_embeddings()
    x, y = data["embeddings"], data["labels"]
    train, test = slice(0, 120), slice(120, 180)
    results = load_frozen_embedding_eval().compute(**data, knn_k=5, knn_temperature=0, num_slices=32, seed=3)

    knn = KNeighborsClassifier(n_neighbors=5, metric="cosine", algorithm="brute").fit(x[train], y[train])
    scaler = StandardScaler().fit(x[train])
    probe = LogisticRegression(C=1.0, max_iter=2000, random_state=3).fit(scaler.transform(x[train]), y[train])
    centered = x[test].astype(np.float64) - x[test].astype(np.float64).mean(axis=0)
    eigenvalues = np.clip(np.linalg.eigvalsh(centered.T @ centered / 59), 0, None)
    p = eigenvalues[eigenvalues > 0] / eigenvalues.sum()
    directions = np.random.default_rng(3).standard_normal((8, 32))
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)
    projected = x[test].astype(np.float64) @ directions

    # ties are possible in the majority vote (k = 5, 3 classes): allow one disagreement of 60
    assert results["knn_accuracy"] == pytest.approx(np.mean(knn.predict(x[test]) == y[test]), abs=1 / 60)
    assert results["linear_probe_accuracy"] == np.mean(probe.predict(scaler.transform(x[test])) == y[test])
    assert results["effective_rank"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-9)
    expected = np.mean([epps_pulley_reference(projected[:, m]) for m in range(32)])
    assert results["epps_pulley"] == pytest.approx(expected, rel=1e-10)
    assert 0.5 < results["knn_accuracy"] <= 1.0 and results["num_classes"] == 3
    assert (results["num_train_samples"], results["num_eval_samples"], results["embedding_size"]) == (120, 60, 8)


def test_library_reports_the_module_metrics():
    """`trainer.evaluation.compute_embedding_metrics` (what the library and the commands call) reports the module's
    numbers."""
    data = fixed_embeddings()
    results = load_frozen_embedding_eval().compute(**data, **SETTINGS)
    library = compute_embedding_metrics(
        data["embeddings"][:120], data["labels"][:120], data["embeddings"][120:], data["labels"][120:], knn_k=5,
        sigreg_num_slices=32, seed=3,
    )
    for key in ("knn_accuracy", "linear_probe_accuracy", "effective_rank"):
        assert results[key] == library[key], key
    assert results["epps_pulley"] == library["sigreg_statistic"]


def test_invalid_split_names_are_refused():
    data = fixed_embeddings()
    data["splits"] = ["train"] * 120 + ["test"] * 60
    with pytest.raises(ValueError, match="'train' or 'eval'"):
        load_frozen_embedding_eval().compute(**data)


FRESH_PROCESS = """
import json
import evaluate
import numpy as np
data = json.load(open("data.json"))
module = evaluate.load(data.pop("path"))
settings = data.pop("settings")
print(json.dumps(module.compute(**data, **settings)))
"""


def test_module_loads_without_this_project(tmp_path):
    data = fixed_embeddings()
    payload = {"path": str(FROZEN_EMBEDDING_EVAL_PATH), "embeddings": data["embeddings"].tolist(),
               "labels": data["labels"].tolist(), "splits": data["splits"], "settings": SETTINGS}
    (tmp_path / "data.json").write_text(json.dumps(payload))
    fresh = json.loads(run_without_package(FRESH_PROCESS, cwd=tmp_path).stdout.strip().splitlines()[-1])
    local = load_frozen_embedding_eval().compute(**data, **SETTINGS)
    assert fresh == pytest.approx(local)


def _add_half(process_id: int, cache_dir: str, queue) -> None:
    """One of 2 processes: adds its half of the examples; process 0 returns the result over all of them."""
    data = fixed_embeddings()
    module = load_frozen_embedding_eval(num_process=2, process_id=process_id, experiment_id="gather-test",
                                        cache_dir=cache_dir)
    index = np.arange(180)[process_id::2]
    module.add_batch(embeddings=data["embeddings"][index], labels=data["labels"][index],
                     splits=[data["splits"][i] for i in index])
    queue.put((process_id, module.compute(**SETTINGS)))


def test_embeddings_are_gathered_over_processes(tmp_path):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_add_half, args=(rank, str(tmp_path), queue)) for rank in range(2)]
    for process in processes:
        process.start()
    results = dict(queue.get(timeout=300) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    assert results[1] is None  # only the first process computes
    # the gathered set is the whole set (in another order: every metric is order-free but the probe's, whose
    # logistic regression is deterministic given the same examples)
    expected = load_frozen_embedding_eval().compute(**fixed_embeddings(), **SETTINGS)
    for key in ("knn_accuracy", "effective_rank", "num_train_samples", "num_eval_samples"):
        assert results[0][key] == pytest.approx(expected[key], rel=1e-9), key
    assert results[0]["linear_probe_accuracy"] == pytest.approx(expected["linear_probe_accuracy"], abs=1 / 60)
    assert results[0]["epps_pulley"] == pytest.approx(expected["epps_pulley"], rel=1e-6)
