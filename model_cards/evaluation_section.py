"""The evaluation section of a model card and the evaluation results behind it.

`render_evaluation_section` writes the section's Markdown (the results table, with the random-init and raw-pixel
baselines and the models compared on the same images as rows, the protocols and the spectrum plot) between
`EVAL_SECTION_START` and `EVAL_SECTION_END`, and `hub_eval_results` gives the card's own model's accuracies as the
`model-index` metadata. The raw results rendered in a card are kept beside it in `lejepa_eval_results.json`
(`read_results`, `write_results`, `merge_results`), so that evaluations on
several datasets accumulate and a card rebuilt later keeps them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import EvalResult

EVAL_SECTION_TEMPLATE = Path(__file__).resolve().parent / "eval_section.md"
EVAL_RESULTS_NAME = "lejepa_eval_results.json"
# The baselines that `trainer.evaluation` adds to a result, as rows of the card's evaluation table, in this order.
BASELINE_ROWS = {
    "random_init_baseline": "random init, same architecture",
    "raw_pixel_baseline": "raw pixels (input resolution)",
}
RAW_PIXEL_PROTOCOL = (
    "**Raw pixels**: the same k-NN and probe on the image as the model sees it (resized to its input resolution and "
    "normalised), flattened."
)
COMPARED_PROTOCOL = (
    "**Other models**: evaluated on the same images with the same k-NN and probe, each with its own image processor "
    "and embedding (`pooler_output`; for ViT and DeiT the final-normed CLS token)."
)
EVAL_SECTION_START = "<!-- lejepa-evaluation:start -->"
EVAL_SECTION_END = "<!-- lejepa-evaluation:end -->"


def as_result_list(eval_results: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """One result (a `dict`) or several as a list of `dict`s; `None` gives `[]`."""
    if eval_results is None:
        return []
    if isinstance(eval_results, Mapping):
        return [dict(eval_results)]
    return [dict(result) for result in eval_results]


def _result_key(result: Mapping[str, Any]) -> tuple[Any, ...]:
    return (result.get("dataset_name"), result.get("dataset_config_name"), result.get("eval_split"))


def _percent(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * float(value):.2f}%"


def _number(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{float(value):.{digits}g}"


def _result_row(result: Mapping[str, Any], model_label: str) -> dict[str, str]:
    dataset = result.get("dataset_display_name") or result.get("dataset_name") or "unknown"
    if result.get("dataset_config_name"):
        dataset += f" ({result['dataset_config_name']})"
    splits = f"{result.get('train_split', '?')} / {result.get('eval_split', '?')}"
    if result.get("num_train_samples") is not None and result.get("num_eval_samples") is not None:
        splits += f" ({result['num_train_samples']} / {result['num_eval_samples']} images)"
    rank = _number(result.get("effective_rank"), 3)
    if result.get("embedding_size") and result.get("effective_rank") is not None:
        rank += f" / {result['embedding_size']}"
    return {
        "model": model_label,
        "dataset": dataset,
        "splits": splits,
        "knn": _percent(result.get("knn_accuracy")),
        "linear": _percent(result.get("linear_probe_accuracy")),
        "rank": rank,
        "sigreg": _number(result.get("sigreg_statistic")),
    }


def _compared_label(compared: Mapping[str, Any]) -> str:
    return str(compared.get("model_label") or compared.get("model_name_or_path") or "other model")


def render_evaluation_section(
    eval_results: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None, spectrum_plot: str | None = None
) -> str:
    """
    Markdown of the evaluation section of a card, between `EVAL_SECTION_START` and `EVAL_SECTION_END`.

    Args:
        eval_results (`dict` or list of `dict`, *optional*): results of `trainer.evaluation.evaluate_embeddings` (keys
            such as `knn_accuracy`, `linear_probe_accuracy`, `effective_rank`, `sigreg_statistic`, `dataset_name`,
            `eval_split`, and optionally `random_init_baseline` and `raw_pixel_baseline` with the same metrics for a
            randomly initialised backbone of the same shape and for the raw pixels at the model's input resolution:
            one row each, after the model's; and optionally `compared_models`, a list of the same metrics for other
            models evaluated on the same images by `lejepa-evaluate`, one row each, labelled by their `model_label`
            or `model_name_or_path`).
        spectrum_plot (`str`, *optional*): relative path of the eigenvalue spectrum PNG to show.
    """
    results = as_result_list(eval_results)
    rows, protocols, sizes = [], [], []
    for result in results:
        rows.append(_result_row(result, "this model"))
        for key, label in BASELINE_ROWS.items():
            if isinstance(result.get(key), Mapping):
                rows.append(_result_row({**result, **result[key]}, label))
        for compared in result.get("compared_models") or []:
            rows.append(_result_row({**result, **compared}, _compared_label(compared)))
            if compared.get("embedding_size") and compared["embedding_size"] not in sizes:
                sizes.append(compared["embedding_size"])
        for key in ("knn_protocol", "linear_probe_protocol"):
            if result.get(key) and result[key] not in protocols:
                protocols.append(result[key])
        if isinstance(result.get("raw_pixel_baseline"), Mapping) and RAW_PIXEL_PROTOCOL not in protocols:
            protocols.append(RAW_PIXEL_PROTOCOL)
        if result.get("compared_models") and COMPARED_PROTOCOL not in protocols:
            protocols.append(COMPARED_PROTOCOL)
        if result.get("embedding_size") and result["embedding_size"] not in sizes:
            sizes.append(result["embedding_size"])
    if rows and not protocols:
        protocols = ["k-NN and linear-probe accuracies are computed on the frozen embeddings."]
    template = jinja2.Template(EVAL_SECTION_TEMPLATE.read_text(encoding="utf-8"))
    return template.render(
        rows=rows,
        protocols=protocols,
        embedding_sizes="/".join(str(size) for size in sizes) or "D",
        spectrum_plot=spectrum_plot,
    ).strip()


def hub_eval_results(eval_results: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[EvalResult]:
    """The accuracies of `eval_results` as `huggingface_hub.EvalResult`s for the card's `model-index`: the card's own
    model's only (the random-init and raw-pixel baselines, the compared models, the effective rank and the SIGReg
    statistic are only in the card's body)."""
    hub_results = []
    for result in as_result_list(eval_results):
        dataset_type = result.get("dataset_name") or "unknown"
        metrics = (
            ("knn_accuracy", f"k-NN accuracy (k={result.get('knn_k', '?')}, frozen)"),
            ("linear_probe_accuracy", "Linear probe accuracy (frozen)"),
        )
        for key, metric_name in metrics:
            if result.get(key) is None:
                continue
            hub_results.append(
                EvalResult(
                    task_type="image-classification",
                    task_name="Image classification (frozen features)",
                    dataset_type=dataset_type,
                    dataset_name=result.get("dataset_display_name") or dataset_type,
                    dataset_config=result.get("dataset_config_name"),
                    dataset_split=result.get("eval_split"),
                    metric_type="accuracy",
                    metric_name=metric_name,
                    metric_value=round(float(result[key]), 6),
                )
            )
    return hub_results


def _merge_compared(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """`new` with the `compared_models` of `old` (a result of the same dataset and split) that `new` does not
    re-evaluate (by `model_name_or_path`) kept before its own."""
    compared = list(new.get("compared_models") or [])
    names = {model.get("model_name_or_path") for model in compared}
    kept = [dict(model) for model in old.get("compared_models") or [] if model.get("model_name_or_path") not in names]
    return {**new, "compared_models": kept + compared} if kept or compared else dict(new)


def merge_results(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`old` results with those of the same dataset, configuration and split replaced by `new` ones; the compared
    models of a replaced result are merged (`new`'s replace those of the same `model_name_or_path`, others stay)."""
    old_by_key = {_result_key(result): result for result in old}
    new = [_merge_compared(old_by_key.get(_result_key(result), {}), result) for result in new]
    new_keys = {_result_key(result) for result in new}
    return [dict(r) for r in old if _result_key(r) not in new_keys] + new


def read_results(card_dir: Path) -> list[dict[str, Any]]:
    """The results saved beside the card in `card_dir`, `[]` when there are none."""
    path = card_dir / EVAL_RESULTS_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []


def write_results(card_dir: Path, results: Sequence[Mapping[str, Any]]) -> None:
    """Saves the results beside the card in `card_dir`."""
    (card_dir / EVAL_RESULTS_NAME).write_text(json.dumps(list(results), indent=2) + "\n", encoding="utf-8")


def splice_evaluation_section(text: str, section: str) -> str:
    """`text`, a card's body, with its evaluation section replaced by `section`; a card from elsewhere, without one,
    gets it before the citation, or at the end."""
    start, end = text.find(EVAL_SECTION_START), text.find(EVAL_SECTION_END)
    if start != -1 and end > start:
        return text[:start] + section + text[end + len(EVAL_SECTION_END) :]
    citation = text.find("## Citation")
    return (text[:citation] + section + "\n\n" + text[citation:]) if citation != -1 else text + "\n" + section


__all__ = [
    "BASELINE_ROWS",
    "COMPARED_PROTOCOL",
    "EVAL_RESULTS_NAME",
    "EVAL_SECTION_END",
    "EVAL_SECTION_START",
    "RAW_PIXEL_PROTOCOL",
    "as_result_list",
    "hub_eval_results",
    "merge_results",
    "read_results",
    "render_evaluation_section",
    "splice_evaluation_section",
    "write_results",
]
