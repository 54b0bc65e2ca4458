"""The synthetic shapes dataset and the adherence checker that judges the embedded model."""

import dataclasses
import random

import numpy as np

from nextdit_nodes.training.embedded.adherence import classify_shape, score_image, summarise
from nextdit_nodes.training.embedded.shapes import (
    COLOURS, SHAPES, Scene, ShapeObject, held_out, held_out_scenes, plain_caption, render,
    training_scene, xml_caption,
)


def test_checker_scores_rendered_captions_as_right_and_shuffled_ones_near_chance():
    scenes = held_out_scenes(200)
    images = [render(scene) for scene in scenes]
    right = summarise([score_image(image, scene) for image, scene in zip(images, scenes)])
    assert min(right.values()) >= 98.0
    shuffled = scenes[1:] + scenes[:1]
    wrong = summarise([score_image(image, scene) for image, scene in zip(images, shuffled)])
    # Chance of the right colour in a requested cell: ~2 occupied cells of 9, 1 colour of 6.
    assert wrong["colour_position_per_object"] < 15.0
    assert wrong["all_right_per_image"] < 5.0


def test_checker_notices_each_wrong_attribute():
    obj = ShapeObject("square", "red", "large", 1, 1)
    image = render(Scene((obj,), "gray"))
    for field, value in (("colour", "blue"), ("size", "small"), ("shape", "triangle"), ("row", 0)):
        asked = dataclasses.replace(obj, **{field: value})
        (score,) = score_image(image, Scene((asked,), "gray"))
        verdict = {"colour": score.colour_position, "row": score.colour_position,
                   "size": score.size, "shape": score.shape}[field]
        assert not verdict, field


def test_shape_classifier_on_ideal_masks():
    yy, xx = np.mgrid[0:21, 0:21]
    circle = (xx - 10) ** 2 + (yy - 10) ** 2 <= 100
    square = np.ones((15, 15), bool)
    triangle = np.abs(xx - 10) <= yy / 2
    assert [classify_shape(m) for m in (circle, square, triangle)] == ["circle", "square", "triangle"]


def test_held_out_combinations_never_appear_in_training_but_their_parts_do():
    rng = random.Random(0)
    seen = [obj for _ in range(2000) for obj in training_scene(rng).objects]
    assert not any(held_out(obj) for obj in seen)
    assert {o.shape for o in seen} == set(SHAPES) and {o.colour for o in seen} == set(COLOURS)
    assert {(o.row, o.column) for o in seen} == {(r, c) for r in range(3) for c in range(3)}
    assert all(held_out(obj) for scene in held_out_scenes(50) for obj in scene.objects)


def test_captions_name_every_object():
    scene = Scene((ShapeObject("circle", "red", "small", 0, 2),
                   ShapeObject("triangle", "blue", "large", 2, 0)), "white")
    xml = xml_caption(scene)
    assert "<character_2>\n<n>triangle</n>\n<appearance>blue, large</appearance>" in xml
    assert "<position>top_right</position>" in xml and "<count>two objects</count>" in xml
    assert plain_caption(scene) == ("a small red circle at the top right and a large blue "
                                    "triangle at the bottom left, on a white background")


def test_embedded_tokenizers_keep_tags_and_caption_words_whole():
    import sentencepiece as spm

    from nextdit_nodes.training.embedded.shapes import caption_pieces
    from nextdit_nodes.training.embedded.text_side import train_tokenizers

    gemma_proto, jina_proto = train_tokenizers()
    gemma = spm.SentencePieceProcessor(model_proto=gemma_proto)
    jina = spm.SentencePieceProcessor(model_proto=jina_proto)
    for piece in caption_pieces():
        assert gemma.encode(piece, out_type=str) == [piece]
        assert jina.encode(piece, out_type=str) == ["▁", piece]  # XLM-R style: a dummy "▁" first
    rng = random.Random(3)
    for _ in range(20):
        scene = training_scene(rng)
        xml = xml_caption(scene)
        ids = gemma.encode(xml)
        assert gemma.decode(ids) == xml
        # Per object: <character_i>, <n>shape</n>, <appearance>colour, size</appearance>,
        # <position>cell</position>, </character_i>; then <general_tags>, <count>..</count>,
        # <background>..</background>, </general_tags>.
        assert len(ids) == 5 * len(scene.objects) + 4
        # Plain English: per object "a", size, colour, shape, " at the <row> <column>"; a "," or
        # " and" between objects; ", on a <background> background" last.
        plain = plain_caption(scene)
        assert gemma.decode(gemma.encode(plain)) == plain
        assert len(gemma.encode(plain)) == 5 * len(scene.objects) + (len(scene.objects) - 1) + 1


def test_embedded_gemma_features_keep_each_tokens_identity():
    """The Next-DiT reads words from the frozen random Gemma's features: the same token in
    different captions must look alike and different tokens must not."""
    import torch

    from nextdit_nodes.text.towers import encode_gemma
    from nextdit_nodes.training.embedded.text_side import build_text_encoders

    gemma, _ = build_text_encoders()
    rng = random.Random(3)
    features, ids = [], []
    for _ in range(20):
        text = xml_caption(training_scene(rng))
        tokens = gemma.tokenizer(text)
        features.append(encode_gemma(gemma, [text]).features[0, :len(tokens)])
        ids += tokens
    unit = torch.nn.functional.normalize(torch.cat(features), dim=-1)
    cosine = unit @ unit.T
    same = torch.tensor(ids)[:, None] == torch.tensor(ids)[None]
    assert cosine[same].mean() > 0.85 and cosine[~same].mean() < 0.3
