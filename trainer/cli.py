"""
The command-line tools that act on finished checkpoints, installed as console commands (see `setup.cfg`):
`lejepa-evaluate` (`evaluate_command`, also `python run_evaluation.py` in a clone; defined in
`trainer.evaluation_command`) and `lejepa-export-backbone` (`export_command`, also `python export_backbone.py`).
`evaluate_main` and `export_main` take the arguments as a list and return what they made; the work is done by
`trainer.evaluation` and `trainer.export`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from .evaluation_command import (
    EVALUATE_DESCRIPTION,
    EvaluationArguments,
    evaluate_command,
    evaluate_main,
    load_model,
    load_splits,
)
from .export import export_backbone

logger = logging.getLogger(__name__)

EXPORT_DESCRIPTION = """\
Exports the backbone of a LeJEPA checkpoint to its native `transformers` architecture (a plain ViTModel,
Dinov2Model, ConvNextModel, ResNetModel, or timm's own format for timm backbones), which loads with
`AutoModel.from_pretrained` without custom code and gives the same embeddings (see `trainer.export`).

Example:

    lejepa-export-backbone CHECKPOINT OUTPUT_DIR --model_id org/name-backbone --base_model org/name
"""


# ---------------------------------------------------------------------------------------------------------------------
# lejepa-export-backbone
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ExportArguments:
    """Options of `lejepa-export-backbone`, besides the positional CHECKPOINT and OUTPUT_DIR: the keyword arguments
    of `trainer.export.export_backbone`."""

    model_id: str | None = field(default=None, metadata={"help": "Hub id the export will have (for its card)."})
    base_model: str | None = field(
        default=None, metadata={"help": "Hub id of the LeJEPA checkpoint, the card's base_model."}
    )
    license: str | None = field(
        default=None, metadata={"help": "License; defaults to the source card's, else apache-2.0."}
    )
    dataset_names: list[str] | None = field(
        default=None, metadata={"help": "Pretraining datasets (Hub ids); default to the source card's."}
    )
    write_default_image_processor: bool = field(
        default=True,
        metadata={"help": "Write an ImageNet-normalised resize processor when the checkpoint has none."},
    )
    verify: bool = field(
        default=True, metadata={"help": "Reload the export without custom code and compare its embeddings."}
    )


def export_main(argv: Sequence[str] | None = None) -> Path:
    """`lejepa-export-backbone CHECKPOINT OUTPUT_DIR [options]`: writes the native backbone, returns its folder."""
    # 1. Arguments: the two folders, then the options of `export_backbone`
    parser = HfArgumentParser(
        ExportArguments, description=EXPORT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint_dir", help="LeJEPA checkpoint (folder or Hub id), any head.")
    parser.add_argument("output_dir", help="Folder to write the native backbone to.")
    args, paths = parser.parse_args_into_dataclasses(args=None if argv is None else list(argv))
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)

    # 2. The export, verified by reloading it without custom code
    output_dir = export_backbone(paths.checkpoint_dir, paths.output_dir, **dataclasses.asdict(args))
    logger.info("Exported the backbone of %s to %s", paths.checkpoint_dir, output_dir)
    return output_dir


def export_command() -> None:
    """The `lejepa-export-backbone` console command: `export_main` on the command line."""
    export_main()


__all__ = [
    "EVALUATE_DESCRIPTION",
    "EvaluationArguments",
    "ExportArguments",
    "evaluate_command",
    "evaluate_main",
    "export_command",
    "export_main",
    "load_model",
    "load_splits",
]
