"""``python -m nextdit_nodes embedded-controlnet-data DIR``: the training pairs of the embedded
ControlNet demo (outline drawings)."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "embedded-controlnet-data", help="write the embedded model's ControlNet demo dataset (outline drawings)",
        description="Render shapes scenes with their outline drawings (NAME.control.png beside NAME.png) and "
                    "captions (full, positions withheld, or positions contradicting the drawing) as a "
                    "metadata.jsonl dataset that train-controlnet reads (README: the embedded model's ControlNet).")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=4000, help="images (default 4000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shares", default="0.5,0.25,0.25", metavar="FULL,WITHHELD,CONTRADICTING",
                        help="shares of the caption kinds: true positions, positions withheld, positions "
                             "contradicting the drawing (default 0.5,0.25,0.25)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..training.embedded.controlnet_demo import write_dataset

    try:
        shares = tuple(float(x) for x in args.shares.split(","))
    except ValueError:
        shares = ()
    if len(shares) != 3 or min(shares) < 0 or abs(sum(shares) - 1) > 1e-6:
        raise SystemExit(f"--shares takes three non-negative numbers that sum to 1 (full, withheld, "
                         f"contradicting); got {args.shares!r}")
    folder = write_dataset(args.folder, args.count, args.seed, shares)
    print(f"wrote {args.count} images with outline drawings and {folder / 'metadata.jsonl'}")
    return 0
