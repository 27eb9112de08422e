"""Figures of the model card: training loss curves and the eigenvalue spectrum of the embedding covariance.

Both functions write a PNG with matplotlib's non-interactive `Agg` backend, so they work on machines without a
display. The spectrum helpers (`covariance_eigenvalues`, `effective_rank`) are also the isotropy figures that
`lejepa-evaluate` reports.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    """`matplotlib.pyplot` with the `Agg` backend, imported when a figure is drawn (matplotlib is in the `train`
    and `eval` extras, so that the model card code imports without it)."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(
            "The model card's figures need matplotlib: `pip install 'lejepa-hf[train]'` (or `[eval]`, or `pip "
            "install matplotlib`)."
        ) from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # the backend is chosen before pyplot is imported

    return plt


# (log_history key, panel title) of the three terms of the LeJEPA loss, as `LeJepaTrainer` logs them.
LOSS_KEYS: tuple[tuple[str, str], ...] = (
    ("loss", "Total loss"),
    ("prediction_loss", "Prediction loss"),
    ("sigreg_loss", "SIGReg"),
)
# The evaluation-time k-NN accuracy of frozen embeddings (`LeJepaTrainer(eval_embedding_metrics=...)`), own panel.
KNN_KEY = "eval_knn_accuracy"


def covariance_eigenvalues(embeddings: np.ndarray) -> np.ndarray:
    """
    Eigenvalues of the covariance of `embeddings`, in decreasing order.

    Args:
        embeddings (`np.ndarray` of shape `(N, D)`): one embedding per row, `N >= 2`.

    Returns:
        `np.ndarray` of shape `(D,)` in float64; tiny negative values from round-off are clipped to 0.

    With fewer samples than dimensions (raw pixels), the eigenvalues come from the `N x N` Gram matrix of the centred
    embeddings, which has the same nonzero eigenvalues as the `D x D` covariance; the other `D - N` are 0.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"`embeddings` must have shape (N, D) with N >= 2, got {x.shape}.")
    num_samples, dim = x.shape
    x = x - x.mean(axis=0, keepdims=True)
    smaller = x @ x.T if num_samples < dim else x.T @ x
    eigenvalues = np.linalg.eigvalsh(smaller / (num_samples - 1))[::-1]
    eigenvalues = np.concatenate([eigenvalues, np.zeros(dim - eigenvalues.shape[0])])
    return np.clip(eigenvalues, 0.0, None)


def effective_rank(embeddings: np.ndarray) -> float:
    """
    Effective rank of the embedding covariance (Roy & Vetterli, 2007): `exp(H(p))` where `p` are the covariance
    eigenvalues normalised to sum to 1 and `H` is the Shannon entropy. It is `D` for an isotropic covariance and 1
    when all the variance lies along one direction.

    Args:
        embeddings (`np.ndarray` of shape `(N, D)`): one embedding per row, `N >= 2`.

    Returns:
        A float in `[1, D]` (1.0 for constant embeddings).
    """
    eigenvalues = covariance_eigenvalues(embeddings)
    total = eigenvalues.sum()
    if total <= 0:
        return 1.0
    p = eigenvalues[eigenvalues > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def _series(log_history: Iterable[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """Steps and values of `key` over the entries of a Trainer `log_history` that have both `step` and `key`."""
    steps, values = [], []
    for entry in log_history:
        if key in entry and "step" in entry and entry[key] is not None:
            steps.append(float(entry["step"]))
            values.append(float(entry[key]))
    return steps, values


def plot_loss_curves(log_history: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> Path | None:
    """
    Plots the total loss, the prediction loss and SIGReg against the training step, one panel each (their scales
    differ), from a `Trainer` `log_history` (`trainer.state.log_history`: dicts with `"step"` and any of `"loss"`,
    `"prediction_loss"`, `"sigreg_loss"`). The validation values of the same terms (`"eval_loss"`,
    `"eval_prediction_loss"`, `"eval_sigreg_loss"`, from `LeJepaTrainer.evaluate`) are drawn in the same panels, and
    the k-NN accuracy of the frozen embeddings (`"eval_knn_accuracy"`) in a panel of its own. Other entries (the
    final summary) are skipped.

    Args:
        log_history (iterable of `dict`): the logged entries.
        path (`str` or `os.PathLike`): where to write the PNG.

    Returns:
        The path of the PNG, or `None` (and no file) when no entry holds any of these values.
    """
    log_history = list(log_history)
    panels = [
        (key, title, [("training", *_series(log_history, key)), ("validation", *_series(log_history, f"eval_{key}"))])
        for key, title in LOSS_KEYS
    ]
    panels.append((KNN_KEY, "k-NN accuracy (validation)", [("validation", *_series(log_history, KNN_KEY))]))
    panels = [(key, title, [line for line in lines if line[1]]) for key, title, lines in panels]
    panels = [panel for panel in panels if panel[2]]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (key, title, lines) in zip(axes[0], panels):
        for label, steps, values in lines:
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, linewidth=1.5, label=label)
        values = [value for _, _, line_values in lines for value in line_values]
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        if min(values) > 0 and max(values) / min(values) > 50:
            ax.set_yscale("log")
        if len(lines) > 1:
            ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
    fig.suptitle("LeJEPA training and validation")
    return _save_figure(fig, path)


def plot_embedding_spectrum(embeddings: np.ndarray, path: str | os.PathLike, title: str | None = None) -> Path:
    """
    Plots the sorted eigenvalues of the covariance of `embeddings` on a log scale, with the isotropic reference: the
    flat spectrum of equal total variance (every eigenvalue equal to the mean eigenvalue), which SIGReg drives the
    embeddings towards. A spectrum that falls off quickly means a collapsed, low-rank representation.

    Args:
        embeddings (`np.ndarray` of shape `(N, D)`): embeddings of held-out images.
        path (`str` or `os.PathLike`): where to write the PNG.
        title (`str`, *optional*): figure title; defaults to one giving `N`, `D` and the effective rank.

    Returns:
        The path of the PNG.
    """
    embeddings = np.asarray(embeddings)
    eigenvalues = covariance_eigenvalues(embeddings)
    num_samples, dim = embeddings.shape
    positive = eigenvalues[eigenvalues > 0]
    floor = positive.min() * 1e-1 if positive.size else 1e-12
    ranks = np.arange(1, dim + 1)

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ranks, np.maximum(eigenvalues, floor), marker="." if dim <= 64 else None, label="embedding covariance")
    mean_eigenvalue = eigenvalues.mean()
    if mean_eigenvalue > 0:
        ax.axhline(mean_eigenvalue, color="gray", linestyle="--", label="isotropic (same total variance)")
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue index (sorted)")
    ax.set_ylabel("eigenvalue")
    if title is None:
        title = f"Embedding spectrum (N={num_samples}, D={dim}, effective rank {effective_rank(embeddings):.1f})"
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save_figure(fig, path)


__all__ = ["covariance_eigenvalues", "effective_rank", "plot_embedding_spectrum", "plot_loss_curves"]


def _save_figure(fig, path: str | os.PathLike) -> Path:
    """Saves `fig` as a PNG at `path` (creating its folder), closes it and returns the path."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path
