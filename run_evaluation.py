#!/usr/bin/env python
r"""
Frozen-backbone evaluation of a LeJEPA (or any `transformers` vision) backbone on a labelled image dataset: k-NN and
linear-probe accuracies, effective rank and SIGReg statistic of the embeddings, against a random backbone of the same
shape and the raw pixels, written to a JSON file and the model card.

This is the `lejepa-evaluate` command (`trainer.cli.evaluate_main`), run from a clone; the library is
`trainer.evaluation`. `python run_evaluation.py --help` lists the options.

Examples:

    python run_evaluation.py --model_name_or_path outputs/photos --random_init_baseline --raw_pixel_baseline \
        --update_model_card
    python run_evaluation.py --model_name_or_path outputs/vitb --dataset_name uoft-cs/cifar10 \
        --image_column_name img --eval_split test --output_file cifar10_eval.json
    python run_evaluation.py --model_name_or_path outputs/photos path/to/dinov2-small --random_init_baseline \
        --embedding_cache_dir embedding_cache --update_model_card   # side by side, one table in the LeJEPA card
"""

from trainer.cli import evaluate_command

if __name__ == "__main__":
    evaluate_command()
