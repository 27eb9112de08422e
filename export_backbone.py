#!/usr/bin/env python
"""
Exports the backbone of a LeJEPA checkpoint to its native `transformers` architecture: a plain `ViTModel` (or
`Dinov2Model`, `ConvNextModel`, `ResNetModel`, or timm's own format) folder that loads with `AutoModel` without custom
code and gives the same embeddings as the LeJEPA model.

This is the `lejepa-export-backbone` command (`trainer.cli.export_main`), run from a clone; the library is
`trainer.export`. `python export_backbone.py --help` lists the options.

Usage:

```bash
python export_backbone.py CHECKPOINT OUTPUT_DIR [--model_id org/name-backbone] [--base_model org/name]
```
"""

from trainer.cli import export_command

if __name__ == "__main__":
    export_command()
