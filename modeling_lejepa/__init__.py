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
    LeJepaForImageClassification,
    LeJepaForPreTraining,
    LeJepaForPreTrainingOutput,
    LeJepaModel,
    LeJepaPreTrainedModel,
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
    "LeJepaConfig",
    "LeJepaForImageClassification",
    "LeJepaForPreTraining",
    "LeJepaForPreTrainingOutput",
    "LeJepaModel",
    "LeJepaPreTrainedModel",
    "SIGReg",
    "epps_pulley",
    "prediction_loss",
]
