"""The runner's core image and ControlNet nodes: LoadImage / LoadImageMask confined to the input
folder (as core loads them), ImageScale (as core's common_upscale), ControlNetApplyAdvanced (as
core's apply node chains controls), Canny (hand-computed edges; kornia's, when installed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nextdit_nodes.runtime.image_nodes import image_node_classes


@pytest.fixture
def nodes(tmp_path):
    folder = tmp_path / "input"
    folder.mkdir()
    rgba = np.zeros((6, 5, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = np.arange(6, dtype=np.uint8)[:, None] * 51
    Image.fromarray(rgba, "RGBA").save(folder / "red.png")
    (tmp_path / "secret.png").write_bytes((folder / "red.png").read_bytes())
    return image_node_classes(folder)


def test_load_image_gives_image_and_one_minus_alpha(nodes):
    image, mask = nodes["LoadImage"]().load_image("red.png")
    assert image.shape == (1, 6, 5, 3) and torch.all(image[..., 0] == 1) and torch.all(image[..., 1:] == 0)
    assert torch.allclose(mask[0, :, 0], 1 - torch.arange(6) * 51 / 255)
    assert "red.png" in nodes["LoadImage"].INPUT_TYPES()["required"]["image"][0]
    (green,) = nodes["LoadImageMask"]().load_image_mask("red.png", "red")
    assert torch.all(green == 1)


@pytest.mark.parametrize("name", ["../secret.png", "/etc/passwd", "missing.png"])
def test_load_image_stays_in_the_input_folder(nodes, name):
    assert nodes["LoadImage"].VALIDATE_INPUTS(name) is not True
    with pytest.raises((ValueError, FileNotFoundError)):
        nodes["LoadImage"]().load_image(name)


def test_image_scale_crops_to_the_aspect_then_resizes(nodes):
    image = torch.arange(4 * 8, dtype=torch.float32).view(1, 4, 8, 1).repeat(1, 1, 1, 3)
    (out,) = nodes["ImageScale"]().upscale(image, "nearest-exact", 2, 2, "center")
    # centre crop 4x8 -> 4x4 (columns 2..5), then nearest-exact to 2x2 picks rows 1, 3 and columns 3, 5
    assert out[0, :, :, 0].tolist() == [[11.0, 13.0], [27.0, 29.0]]
    (kept,) = nodes["ImageScale"]().upscale(image, "bilinear", 0, 8, "disabled")
    assert kept.shape == (1, 8, 16, 3)


def test_apply_controlnet_chains_like_core(nodes):
    from nextdit_nodes.controlnet.handle import ControlNetHandle

    apply = nodes["ControlNetApplyAdvanced"]()
    pos, neg = [[torch.zeros(1, 2, 4), {}]], [[torch.zeros(1, 2, 4), {}]]
    image = torch.rand(1, 16, 16, 3)
    first, second = ControlNetHandle("a"), ControlNetHandle("b")
    pos1, neg1 = apply.apply_controlnet(pos, neg, first, image, 0.5, 0.1, 0.9)
    pos2, neg2 = apply.apply_controlnet(pos1, neg1, second, image, 1.5, 0.0, 1.0)
    assert pos2[0][1]["control"] is neg2[0][1]["control"]           # one handle for both, as core
    assert [h.net for h in pos2[0][1]["control"].chain()] == ["a", "b"]
    assert pos2[0][1]["control"].chain()[0].timestep_percent_range == (0.1, 0.9)
    assert pos == [[pos[0][0], {}]]                                   # inputs unchanged
    assert apply.apply_controlnet(pos, neg, first, image, 0.0, 0.0, 1.0) == (pos, neg)


def test_canny_marks_a_step_edge_and_nothing_on_flat_ground(nodes):
    image = torch.zeros(1, 20, 20, 3)
    image[:, :, 10:] = 1.0
    (edges,) = nodes["Canny"]().detect_edge(image, 0.4, 0.8)
    # Equal magnitudes at columns 9 and 10 across the step: the left one is kept (the tie rule).
    assert torch.all(edges[0, :, 9] == 1) and edges[0].sum() == 20 * 3
    (flat,) = nodes["Canny"]().detect_edge(torch.full((1, 20, 20, 3), 0.3), 0.4, 0.8)
    assert flat.sum() == 0


def test_canny_equals_kornias():
    kornia = pytest.importorskip("kornia")
    from nextdit_nodes.controlnet.canny import canny

    g = torch.Generator().manual_seed(0)
    block = torch.zeros(1, 3, 40, 40)
    block[..., 10:30, 12:25] = 1.0
    for image in (torch.rand(2, 3, 37, 53, generator=g), block):
        for low, high in ((0.4, 0.8), (0.1, 0.2)):
            assert torch.equal(canny(image, low, high), kornia.filters.canny(image, low, high)[1])


def test_serve_offers_them_as_core_nodes(tmp_path):
    from nextdit_nodes.nodes import NODE_CLASS_MAPPINGS
    from nextdit_nodes.runtime.run import runner_classes
    from nextdit_nodes.server.object_info import object_info

    info = object_info(runner_classes(tmp_path, tmp_path, tmp_path), set(NODE_CLASS_MAPPINGS))
    for node_id in ("LoadImage", "LoadImageMask", "ImageScale", "ControlNetApplyAdvanced"):
        assert info[node_id]["python_module"] == "nodes"
    assert info["Canny"]["python_module"] == "comfy_extras.nodes_canny"
    assert info["LoadImage"]["input"]["required"]["image"][1] == {"image_upload": True}
    assert info["NextDiTControlNetLoader"]["output"] == ["CONTROL_NET"]
    assert info["ControlNetApplyAdvanced"]["input"]["optional"]["vae"] == ("VAE",)


def test_a_saved_load_image_with_its_upload_button_value_loads(nodes, tmp_path):
    import json

    from nextdit_nodes.runtime.workflow import load_workflow

    ui = {"nodes": [{"id": 1, "type": "LoadImage", "widgets_values": ["red.png", "image"], "inputs": [],
                     "outputs": []}], "links": [], "version": 0.4}
    path = tmp_path / "w.json"
    path.write_text(json.dumps(ui))
    assert load_workflow(path, nodes).nodes["1"].inputs["image"] == "red.png"
