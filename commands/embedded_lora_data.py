"""``python -m nextdit_nodes embedded-lora-data DIR``: the training images of the embedded LoRA demo."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "embedded-lora-data", help="write the embedded model's LoRA demo dataset (a size it never saw: tiny)",
        description="Render shapes scenes in which objects are tiny (a size the embedded model never saw) or "
                    "small or large, captioned like the base data, as a metadata.jsonl dataset that "
                    "train-lora reads (README: the embedded model's LoRA).")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=3000, help="images (default 3000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..training.embedded.lora_demo import write_dataset

    folder = write_dataset(args.folder, args.count, args.seed)
    print(f"wrote {args.count} images and {folder / 'metadata.jsonl'}")
    return 0
