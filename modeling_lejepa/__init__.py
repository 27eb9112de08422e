"""LeJEPA for the Hugging Face ecosystem: configuration, models and loss.

Importing this package registers the classes with the `transformers` Auto classes, and marks them so that
`save_pretrained` writes `auto_map` into `config.json` and copies this code next to the weights: a checkpoint then
loads anywhere with `trust_remote_code=True`, without this package.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)

from .configuration_lejepa import LeJepaConfig
from .modeling_lejepa import (
    CLS_TOKEN_BACKBONES,
    LeJepaForImageClassification,
    LeJepaForPreTraining,
    LeJepaForPreTrainingOutput,
    LeJepaModel,
    LeJepaPreTrainedModel,
    accepts_interpolate_pos_encoding,
    build_backbone,
    embedding_size,
    input_image_size,
    pool_embedding,
    uses_cls_token,
)
from .sigreg import SIGReg, epps_pulley, prediction_loss

AUTO_CLASSES = {
    "AutoModel": (AutoModel, LeJepaModel),
    "AutoModelForPreTraining": (AutoModelForPreTraining, LeJepaForPreTraining),
    "AutoModelForImageClassification": (AutoModelForImageClassification, LeJepaForImageClassification),
}

AutoConfig.register(LeJepaConfig.model_type, LeJepaConfig, exist_ok=True)
LeJepaConfig.register_for_auto_class()
for _name, (_auto_class, _model_class) in AUTO_CLASSES.items():
    _auto_class.register(LeJepaConfig, _model_class, exist_ok=True)
    _model_class.register_for_auto_class(_name)

__all__ = [
    "CLS_TOKEN_BACKBONES",
    "LeJepaConfig",
    "LeJepaForImageClassification",
    "LeJepaForPreTraining",
    "LeJepaForPreTrainingOutput",
    "LeJepaModel",
    "LeJepaPreTrainedModel",
    "SIGReg",
    "accepts_interpolate_pos_encoding",
    "build_backbone",
    "embedding_size",
    "epps_pulley",
    "input_image_size",
    "pool_embedding",
    "prediction_loss",
    "uses_cls_token",
]
