"""Worker for tests/test_distributed.py, run by `accelerate launch` on 1 or 2 CPU processes (gloo).

Usage: python distributed_worker.py {data,gradients,train,evaluate,device_views} OUTPUT_DIR [--batch_norm]
Writes its findings as JSON / torch files into OUTPUT_DIR for the test to compare with a single-process reference.
"""

import itertools
import json
import os
import sys

import torch
from accelerate import PartialState
from datasets import Dataset, IterableDataset
from transformers import TrainingArguments

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modeling_lejepa import LeJepaConfig, LeJepaForPreTraining  # noqa: E402
from trainer import LeJepaTrainer  # noqa: E402

NUM_IMAGES = 32


def fixed_views(index: int) -> dict:
    """Deterministic views of image `index`: the same on every process and in every run."""
    generator = torch.Generator().manual_seed(index)
    return {
        "pixel_values": torch.randn(2, 3, 32, 32, generator=generator),
        "local_pixel_values": torch.randn(2, 3, 16, 16, generator=generator),
        "index": index,
    }


def collate(examples: list[dict]) -> dict:
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "local_pixel_values": torch.stack([e["local_pixel_values"] for e in examples]),
        "index": torch.tensor([e["index"] for e in examples]),
    }


def tiny_model(batch_norm: bool) -> LeJepaForPreTraining:
    torch.manual_seed(0)
    config = LeJepaConfig.from_preset("vit-tiny-test", projector_use_batch_norm=batch_norm, num_local_views=2)
    return LeJepaForPreTraining(config)


def make_trainer(output_dir: str, batch_size: int, batch_norm: bool, train_dataset=None, **kwargs) -> LeJepaTrainer:
    args = TrainingArguments(
        output_dir=output_dir, use_cpu=True, per_device_train_batch_size=batch_size, report_to="none",
        remove_unused_columns=False, seed=0, data_seed=0, save_strategy="no", logging_steps=1,
        dataloader_num_workers=0, **kwargs,
    )
    return LeJepaTrainer(model=tiny_model(batch_norm), args=args, train_dataset=train_dataset, data_collator=collate)


def check_data(output_dir: str) -> None:
    """Indices each process sees in one epoch, map-style and streamed (and in its next pass over the stream)."""
    map_style = Dataset.from_dict({"index": list(range(NUM_IMAGES))})
    map_style = map_style.with_transform(lambda batch: {"index": batch["index"]})

    def shard_generator(shards):
        for shard in shards:
            for i in range(shard * 8, shard * 8 + 8):
                yield {"index": i}

    streamed = IterableDataset.from_generator(shard_generator, gen_kwargs={"shards": list(range(NUM_IMAGES // 8))})
    streamed = streamed.shuffle(seed=0, buffer_size=16)
    seen = {}
    for name, dataset, dispatch in (("map", map_style, True), ("stream", streamed, False)):
        trainer = make_trainer(
            output_dir, 4, False, train_dataset=dataset, max_steps=100,
            accelerator_config={"dispatch_batches": dispatch},
        )
        trainer.data_collator = lambda examples: {"index": torch.tensor([e["index"] for e in examples])}
        batches = trainer.get_train_dataloader()
        if name == "stream":  # repeated by the trainer without end: this process's first two passes over its shards
            per_pass = NUM_IMAGES // trainer.accelerator.num_processes // 4
            batches = itertools.islice(batches, 2 * per_pass)
        seen[name] = [i for batch in batches for i in batch["index"].tolist()]
    stream, half = seen["stream"], len(seen["stream"]) // 2
    seen["stream"], seen["stream_next_pass"] = stream[:half], stream[half:]
    rank = trainer.accelerator.process_index
    with open(os.path.join(output_dir, f"data_rank{rank}.json"), "w") as f:
        json.dump({"num_processes": trainer.accelerator.num_processes, **seen}, f)


def check_gradients(output_dir: str) -> None:
    """SIGReg value, loss and parameter gradients after DDP averaging, for this process's half of a fixed batch."""
    trainer = make_trainer(output_dir, 8, False)
    accelerator = trainer.accelerator
    model = accelerator.prepare(trainer.model)
    world, rank = accelerator.num_processes, accelerator.process_index
    batch = collate([fixed_views(i) for i in range(16)])
    per_rank = 16 // world
    local = {k: v[rank * per_rank : (rank + 1) * per_rank] for k, v in batch.items() if k != "index"}
    outputs = model(**local, step=5)
    accelerator.backward(outputs.loss)
    loss = accelerator.reduce(outputs.loss.detach(), "mean")
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        torch.save(
            {
                "num_processes": world,
                "sigreg_loss": outputs.sigreg_loss,
                "loss": loss,
                "grads": {n: p.grad.clone() for n, p in unwrapped.named_parameters() if p.grad is not None},
            },
            os.path.join(output_dir, "gradients.pt"),
        )


def check_training(output_dir: str, batch_norm: bool) -> None:
    """A few optimisation steps; the logged losses for comparison with one process on the same global batches."""
    dataset = Dataset.from_dict({"index": list(range(NUM_IMAGES))})
    dataset = dataset.with_transform(lambda batch: {"index": batch["index"]})

    world = int(os.environ.get("WORLD_SIZE", "1"))
    trainer = make_trainer(output_dir, 16 // world, batch_norm, train_dataset=dataset, max_steps=8,
                           learning_rate=1e-2, warmup_steps=0, lr_scheduler_type="constant")
    trainer.data_collator = lambda examples: collate([fixed_views(e["index"]) for e in examples])
    trainer.train()
    if trainer.is_world_process_zero():
        history = [
            {k: entry[k] for k in ("step", "loss", "prediction_loss", "sigreg_loss")}
            for entry in trainer.state.log_history
            if "prediction_loss" in entry
        ]
        with open(os.path.join(output_dir, "losses.json"), "w") as f:
            json.dump({"num_processes": trainer.accelerator.num_processes, "history": history}, f)


def check_evaluation(output_dir: str) -> None:
    """The validation loss of a fixed model on 21 digits (SIGReg blocks of 8, 8 and 5 images), with the global eval
    batch of 8 split over the processes. Process 1 first scrambles its BatchNorm running statistics, as a training
    step would leave them: the evaluation must use process 0's."""
    from trainer import MultiCropCollator, MultiCropTransform, load_digits_dataset, prepare_validation_dataset

    world = int(os.environ.get("WORLD_SIZE", "1"))
    config = LeJepaConfig.from_preset("vit-tiny-test", num_local_views=2)
    torch.manual_seed(0)
    model = LeJepaForPreTraining(config)
    validation = prepare_validation_dataset(
        load_digits_dataset()["test"].select(range(21)), MultiCropTransform.from_lejepa_config(config), "image"
    )
    args = TrainingArguments(output_dir=output_dir, use_cpu=True, per_device_eval_batch_size=8 // world,
                             report_to="none", remove_unused_columns=False, dataloader_num_workers=0)
    trainer = LeJepaTrainer(model=model, args=args, eval_dataset=validation, data_collator=MultiCropCollator())
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if trainer.accelerator.process_index == 1 and "running" in name:
                buffer.mul_(1.5).add_(0.1)
    metrics = trainer.evaluate()
    if trainer.is_world_process_zero():
        with open(os.path.join(output_dir, "eval.json"), "w") as f:
            json.dump({"num_processes": trainer.accelerator.num_processes, **metrics}, f)
def check_device_views(output_dir: str) -> None:
    """The views `LeJepaTrainer` makes on the device (`augment_on_device`) from the first batch, on every process;
    all images are the same, so any difference between processes comes from the views' random generator."""
    import numpy as np
    import PIL.Image

    from trainer import DecodeResizeTransform, MultiCropCollator, MultiCropConfig, prepare_pretraining_dataset

    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    dataset = Dataset.from_dict({"image": [image] * NUM_IMAGES}).cast_column("image", __import__("datasets").Image())
    config = tiny_model(False).config
    dataset = prepare_pretraining_dataset(dataset, DecodeResizeTransform(MultiCropConfig.from_lejepa_config(config)),
                                          "image")
    args = TrainingArguments(output_dir=output_dir, use_cpu=True, per_device_train_batch_size=4, report_to="none",
                             remove_unused_columns=False, seed=3, save_strategy="no", dataloader_num_workers=0)
    trainer = LeJepaTrainer(model=tiny_model(False), args=args, train_dataset=dataset, augment_on_device=True,
                            data_collator=MultiCropCollator(return_labels=False))
    batch = next(iter(trainer.get_train_dataloader()))
    views = trainer._prepare_inputs(batch)
    rank = trainer.accelerator.process_index
    torch.save(
        {
            "num_processes": trainer.accelerator.num_processes, "process_index": rank, "seed": args.seed,
            "images": batch["images"].cpu(), "image_sizes": batch["image_sizes"].cpu(),
            "pixel_values": views["pixel_values"].cpu(), "local_pixel_values": views["local_pixel_values"].cpu(),
        },
        os.path.join(output_dir, f"views_rank{rank}.pt"),
    )


if __name__ == "__main__":
    mode, output_dir = sys.argv[1], sys.argv[2]
    os.makedirs(output_dir, exist_ok=True)
    if mode == "data":
        check_data(output_dir)
    elif mode == "gradients":
        check_gradients(output_dir)
    elif mode == "evaluate":
        check_evaluation(output_dir)
    elif mode == "device_views":
        check_device_views(output_dir)
    else:
        check_training(output_dir, batch_norm="--batch_norm" in sys.argv)
    PartialState().destroy_process_group()  # as run_pretraining.py does: a gloo group left to the exit can abort it
