"""The Next-DiT ControlNet: its forward against a reference built from PyTorch hooks, strength 0,
stacking, the file layout, and refusing other files."""

from __future__ import annotations

import pytest
import torch
from factories import random_dit, random_inputs, tiny_params

from nextdit_nodes.controlnet.apply import ActiveControl, controls_attached, prepare
from nextdit_nodes.controlnet.files import load_controlnet, save_controlnet
from nextdit_nodes.controlnet.model import ControlNetParams, NextDiTControlNet
from nextdit_nodes.files.errors import WeightsError

P = tiny_params(n_layers=4)
CAPS = [3, 5]


def random_controlnet(n_blocks: int = 2, seed: int = 0, layers=None) -> NextDiTControlNet:
    """A ControlNet with every weight random (projections included, so it changes the output)."""
    net = NextDiTControlNet(ControlNetParams.like(P, n_blocks, layers))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.named_parameters():
            if tensor.ndim == 2:
                tensor.copy_(torch.randn(tensor.shape, generator=gen) / tensor.shape[1] ** 0.5)
            else:
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen) if "norm" in name
                             else 0.1 * torch.randn(tensor.shape, generator=gen))
    return net.eval().requires_grad_(False)


def hint_for(seed: int, b: int = 2) -> torch.Tensor:
    return torch.randn(b, 16, 8, 8, generator=torch.Generator().manual_seed(100 + seed))


def _forward(model, inputs):
    return model(inputs["x"], inputs["t"], inputs["cap_feats"], inputs["cap_mask"], inputs["clip_pooled"])


def reference(model, inputs, controls: list[tuple[NextDiTControlNet, torch.Tensor, list[float]]]):
    """The expected output, with no seam: a pre-hook on joint layer 0 captures its input, each
    control network is run here block by block, and post-hooks on the joint layers add each
    block's projection of the image rows (rows from the caption lengths) times the strength."""
    n_img = 16                                    # (8/2) * (8/2) patches
    img_rows = torch.cat([torch.arange(start + lc, start + lc + n_img)
                          for start, lc in zip([0, CAPS[0] + n_img], CAPS)])
    adds: dict[int, torch.Tensor] = {}

    def capture(module, args):
        joint, segments, cos, sin, c = args[:5]
        for net, hint, strengths in controls:
            patches = hint.view(2, 16, 4, 2, 4, 2).permute(0, 2, 4, 3, 5, 1).reshape(2 * n_img, 64)
            stream = joint.clone()
            stream[img_rows] += net.control_x_embedder(patches)
            scale = torch.tensor(strengths).repeat_interleave(n_img)[:, None]
            for i, (block, projection) in enumerate(zip(net.control_blocks, net.control_projections)):
                stream = block(stream, segments, cos, sin, c)
                layer = i * len(model.layers) // len(net.control_blocks)
                add = projection(stream[img_rows]) * scale
                adds[layer] = adds[layer] + add if layer in adds else add

    def add(index):
        def hook(module, args, out):
            if index in adds:
                out = out.clone()
                out[img_rows] += adds[index]
            return out
        return hook

    handles = [model.layers[0].register_forward_pre_hook(capture)]
    handles += [layer.register_forward_hook(add(i)) for i, layer in enumerate(model.layers)]
    try:
        return _forward(model, inputs)
    finally:
        for handle in handles:
            handle.remove()


@pytest.fixture(scope="module")
def model():
    return random_dit(P, seed=1)


def test_control_adds_its_residuals_like_the_hook_reference(model):
    inputs = random_inputs(P, CAPS, seed=2)
    net = random_controlnet(2, seed=3)
    with torch.no_grad(), controls_attached(model, [ActiveControl(net, hint_for(0), 0.7)]):
        out = _forward(model, inputs)
    expected = reference(model, inputs, [(net, hint_for(0), [0.7, 0.7])])
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-4)
    assert (out - _forward(model, inputs)).abs().max() > 1e-2    # it changes the output
    assert "controlnet" not in model.seam                         # detached afterwards


def test_strength_zero_and_fresh_network_are_exactly_no_controlnet(model):
    inputs = random_inputs(P, CAPS, seed=4)
    plain = _forward(model, inputs)
    with torch.no_grad():
        with controls_attached(model, [ActiveControl(random_controlnet(2), hint_for(1), 0.0)]):
            assert torch.equal(_forward(model, inputs), plain)
        with controls_attached(model, [ActiveControl(random_controlnet(2), hint_for(1), torch.zeros(2))]):
            assert torch.equal(_forward(model, inputs), plain)
        fresh = NextDiTControlNet(ControlNetParams.like(P, 2)).eval()     # zero projections
        with controls_attached(model, [ActiveControl(fresh, hint_for(1), 1.0)]):
            assert torch.equal(_forward(model, inputs), plain)


def test_per_sample_strength_leaves_a_zero_strength_sample_unchanged(model):
    inputs = random_inputs(P, CAPS, seed=5)
    net = random_controlnet(2, seed=6)
    with torch.no_grad(), controls_attached(model, [ActiveControl(net, hint_for(2), torch.tensor([1.0, 0.0]))]):
        out = _forward(model, inputs)
    expected = reference(model, inputs, [(net, hint_for(2), [1.0, 0.0])])
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-4)


def test_two_controlnets_add_the_sum_of_their_residuals(model):
    inputs = random_inputs(P, CAPS, seed=7)
    a, b = random_controlnet(2, seed=8), random_controlnet(4, seed=9)
    with torch.no_grad(), controls_attached(model, [ActiveControl(a, hint_for(3), 0.5),
                                                    ActiveControl(b, hint_for(4), 1.2)]):
        out = _forward(model, inputs)
    expected = reference(model, inputs, [(a, hint_for(3), [0.5, 0.5]), (b, hint_for(4), [1.2, 1.2])])
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-4)


def test_saved_file_loads_with_layers_and_metadata(tmp_path, model):
    net = random_controlnet(2, seed=10, layers=(1, 3))
    path = save_controlnet(tmp_path / "cn.safetensors", net, control="canny", base="abc123",
                           training="steps=3")
    loaded = load_controlnet(path)
    assert loaded.params == net.params
    assert loaded.metadata["nextdit_controlnet_control"] == "canny"
    assert loaded.metadata["nextdit_controlnet_base"] == "abc123"
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert net.params.target_layers(4) == (1, 3)


def test_another_width_is_refused_before_running(model):
    other = NextDiTControlNet(ControlNetParams(dim=96, n_heads=8, n_kv_heads=2, ffn_dim=80, n_blocks=1))
    with pytest.raises(ValueError, match="width 96 vs the model's 48"):
        prepare(other, model)


@pytest.mark.parametrize("keys, what", [
    ({"input_blocks.0.0.weight": (4, 4), "zero_convs.0.0.weight": (4, 4), "middle_block_out.0.weight": (4, 4)},
     "Stable Diffusion / SDXL ControlNet"),
    ({"controlnet_x_embedder.weight": (4, 4), "controlnet_blocks.0.weight": (4, 4),
      "transformer_blocks.0.attn.to_q.weight": (4, 4)}, "FLUX ControlNet"),
    ({"control_layers.0.after_proj.weight": (4, 4), "control_all_x_embedder.2-1.weight": (4, 4)},
     "Z-Image Fun ControlNet"),
    ({"pos_embed_input.proj.weight": (4, 4), "controlnet_blocks.0.weight": (4, 4)}, "SD3 ControlNet"),
])
def test_other_controlnet_families_are_refused_by_name(tmp_path, keys, what):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, str(path))
    with pytest.raises(WeightsError, match=what):
        load_controlnet(path)


def test_truncated_and_incomplete_files_are_refused(tmp_path):
    path = save_controlnet(tmp_path / "cn.safetensors", random_controlnet(2))
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(WeightsError, match="truncated"):
        load_controlnet(cut)
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    del state["control_projections.1.weight"]
    partial = tmp_path / "partial.safetensors"
    save_file(state, str(partial))
    with pytest.raises(WeightsError, match="control_projections.1: missing|control_projections.1.weight: missing"):
        load_controlnet(partial)


def test_loader_node_returns_a_handle_core_apply_accepts(tmp_path, monkeypatch):
    from nextdit_nodes.nodes import NODE_CLASS_MAPPINGS

    folder = tmp_path / "controlnet"
    save_controlnet(folder / "mine.safetensors", random_controlnet(2))
    monkeypatch.setenv("NEXTDIT_MODELS_DIR", str(tmp_path))
    node = NODE_CLASS_MAPPINGS["NextDiTControlNetLoader"]
    assert "mine.safetensors" in node.INPUT_TYPES()["required"]["control_net_name"][0]
    (handle,) = node().load("mine.safetensors")
    copy = handle.copy().set_cond_hint(torch.zeros(1, 3, 16, 16), 0.5, (0.1, 0.9), vae=None, extra_concat=[])
    assert copy is not handle and copy.net is handle.net
    assert (copy.strength, copy.timestep_percent_range) == (0.5, (0.1, 0.9))
    assert copy.set_previous_controlnet(handle) is copy and copy.chain() == [handle, copy]
