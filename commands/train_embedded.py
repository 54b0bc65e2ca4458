"""``python -m nextdit_nodes train-embedded``: train the embedded default model from scratch."""

from __future__ import annotations

import logging
from pathlib import Path

from ..nodes.host import EMBEDDED_DIR


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-embedded", help="train the embedded default model (about an hour on 2 CPU cores)",
        description="Train the embedded shapes model: text side, FLUX-architecture autoencoder, "
                    "Next-DiT, then its guidance-distilled, 4-step and half-depth students. Fixed seed; writes the "
                    "files in the real layouts under --output.")
    parser.add_argument("--output", type=Path, default=EMBEDDED_DIR,
                        help=f"models folder to write into (default: the pack's {EMBEDDED_DIR})")
    parser.add_argument("--ae-steps", type=int, default=None, help="autoencoder training steps")
    parser.add_argument("--dit-steps", type=int, default=None, help="Next-DiT training steps")
    parser.add_argument("--distill-iterations", type=int, default=None, help="student iterations")
    parser.add_argument("--few-step-iterations", type=int, default=None, help="few-step student iterations per round")
    parser.add_argument("--few-steps", type=int, default=None, choices=(1, 2, 4),
                        help="the few-step student's step count (default 4, the shipped one; 2 or 1 also write "
                             "the rounds before, 4 and 2 steps)")
    parser.add_argument("--tiny-decoder-steps", type=int, default=None,
                        help="train the autoencoder's tiny decoder (distill-decoder) for this many steps of 32 "
                             "scenes (1500 planned; default 0: the stage is left out)")
    parser.add_argument("--compact-iterations", type=int, default=None,
                        help="train the half-depth student (`distill --layers 3`) for this many iterations "
                             "(default 0: the stage is left out; 500 were measured)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true",
                        help="keep the stages whose files already exist in --output (delete a file to "
                             "retrain its stage)")
    parser.set_defaults(func=run)


def run(args) -> int:
    import dataclasses

    import torch

    from ..training.embedded.pipeline import TrainingPlan, train_embedded

    torch.set_num_threads(max(1, torch.get_num_threads()))
    overrides = {name: value for name, value in (("ae_steps", args.ae_steps), ("dit_steps", args.dit_steps),
                                                 ("distill_iterations", args.distill_iterations),
                                                 ("few_step_iterations", args.few_step_iterations),
                                                 ("few_steps", args.few_steps),
                                                 ("tiny_decoder_steps", args.tiny_decoder_steps),
                                                 ("compact_iterations", args.compact_iterations))
                 if value is not None}
    plan = dataclasses.replace(TrainingPlan(seed=args.seed), **overrides)
    logging.getLogger(__name__).info("training the embedded model into %s with %s", args.output, plan)
    train_embedded(args.output, plan, resume=args.resume)
    return 0
