"""The embedded ControlNet demo's data: outline drawings (no colour, the scene's shapes where the
scene has them), captions without or with contradicting positions, pairs under the naming rule."""

from __future__ import annotations

import json
import random

import numpy as np

from nextdit_nodes.training.controlnet_inputs import control_image_of
from nextdit_nodes.training.embedded.adherence import score_image
from nextdit_nodes.training.embedded.controlnet_demo import (caption_without_positions, contradicting,
                                                             render_outline, write_dataset)
from nextdit_nodes.training.embedded.shapes import held_out_scenes


def test_outlines_are_grey_and_show_each_shape_in_its_cell():
    for scene in held_out_scenes(20):
        drawing = render_outline(scene)
        assert np.array_equal(drawing[..., 0], drawing[..., 1]) and np.array_equal(drawing[..., 1], drawing[..., 2])
        assert all(score.shape and score.size for score in score_image(drawing, scene))
        for row in range(3):          # nothing drawn in empty cells
            for column in range(3):
                if not any((o.row, o.column) == (row, column) for o in scene.objects):
                    assert drawing[row * 21 + 2:(row + 1) * 21 - 2, column * 21 + 2:(column + 1) * 21 - 2].max() < 40


def test_captions_without_and_with_contradicting_positions():
    rng = random.Random(0)
    for scene in held_out_scenes(20):
        assert "<position>" not in caption_without_positions(scene) and " at the " not in \
            caption_without_positions(scene, plain=True)
        moved = contradicting(scene, rng)
        assert all((a.row, a.column) != (b.row, b.column) for a, b in zip(scene.objects, moved.objects))
        assert [(o.shape, o.colour, o.size) for o in moved.objects] == [(o.shape, o.colour, o.size) for o in scene.objects]


def test_dataset_pairs_follow_the_naming_rule(tmp_path):
    folder = write_dataset(tmp_path / "data", 5)
    lines = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == 5
    for line in lines:
        assert control_image_of(folder / line["image"]) == folder / line["image"].replace(".png", ".control.png")
