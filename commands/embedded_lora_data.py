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
    parser.add_argument("--share", type=float, default=None, metavar="P",
                        help="chance that an object of a scene is tiny (default 0.4, the 3000-image recipe's "
                             "mix; 1: every object, as in a dataset of the concept alone)")
    parser.add_argument("--prior-prompts", type=Path, default=None, metavar="FILE",
                        help="also write this prompt file for train-lora --prior-prompts: the dataset's captions "
                             "with tiny swapped for small, then --prior-count captions of base training scenes "
                             "(known sizes only, none of the held-out evaluation prompts)")
    parser.add_argument("--prior-count", type=int, default=200,
                        help="captions of base training scenes in --prior-prompts (default 200)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..files.atomic import write_text
    from ..training.embedded.lora_demo import CONCEPT_SHARE, prior_captions, write_dataset
    from .arguments import PROMPT_LINE_BREAK, UsageError

    share = CONCEPT_SHARE if args.share is None else args.share
    if not 0 < share <= 1:   # also refuses nan
        raise UsageError(f"--share {share:g}: the chance that an object is tiny must be above 0 and at most 1")
    folder = write_dataset(args.folder, args.count, args.seed, share=share)
    print(f"wrote {args.count} images and {folder / 'metadata.jsonl'}")
    if args.prior_prompts is not None:
        lines = [text.replace("\n", PROMPT_LINE_BREAK) for text in prior_captions(folder, args.prior_count, args.seed)]
        write_text(args.prior_prompts, "\n".join(lines) + "\n")
        print(f"wrote {len(lines)} prior prompts to {args.prior_prompts}")
    return 0
