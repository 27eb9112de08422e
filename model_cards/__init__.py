"""Model cards of LeJEPA checkpoints and of their exported backbones, and the figures they show."""

from .card import (
    CITATION,
    build_backbone_model_card,
    build_model_card,
    embedding_rule,
    hub_eval_results,
    model_card_tags,
    render_evaluation_section,
    update_model_card,
)
from .plots import covariance_eigenvalues, effective_rank, plot_embedding_spectrum, plot_loss_curves

__all__ = [
    "CITATION",
    "build_backbone_model_card",
    "build_model_card",
    "covariance_eigenvalues",
    "effective_rank",
    "embedding_rule",
    "hub_eval_results",
    "model_card_tags",
    "plot_embedding_spectrum",
    "plot_loss_curves",
    "render_evaluation_section",
    "update_model_card",
]
