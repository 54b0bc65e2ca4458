"""Small fake node classes (ComfyUI V1 API) for the runner's tests; each counts its calls."""

from __future__ import annotations

import torch

from nextdit_nodes.nodes import host

CALLS: dict[str, int] = {}


def _count(name: str) -> None:
    CALLS[name] = CALLS.get(name, 0) + 1


class FakeLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0})}}

    RETURN_TYPES = ("FAKE_MODEL",)
    FUNCTION = "load"
    DISPLAY_NAME = "Fake Loader"

    def load(self, scale):
        _count("FakeLoader")
        return ({"scale": scale},)


class FakeText:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True, "default": ""})}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "make"

    def make(self, text):
        _count("FakeText")
        return (text,)


class FakeSampler:
    """Widgets in order: seed (+control), steps, cfg, solver; optional denoise; sockets model, text."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("FAKE_MODEL", {}),
                "text": ("STRING", {"forceInput": True}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**64 - 1,
                                 "control_after_generate": True}),
                "steps": ("INT", {"default": 4, "min": 1, "max": 100}),
                "cfg": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 30.0}),
                "solver": (["euler", "midpoint"], {"default": "euler"}),
            },
            "optional": {"denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0})},
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    DISPLAY_NAME = "Fake Sampler"

    @classmethod
    def VALIDATE_INPUTS(cls, steps):
        return True if steps != 13 else "13 steps are unlucky; pick another number"

    def sample(self, model, text, seed, steps, cfg, solver, denoise=1.0):
        _count("FakeSampler")
        progress = host.Progress(steps)
        for step in range(steps):
            progress.update(step + 1)
        generator = torch.Generator().manual_seed(seed)
        value = torch.rand(1, 4, 2, 2, generator=generator) * model["scale"] * cfg / 10
        return ({"samples": value.clamp(0, 1), "text": text, "steps": steps, "denoise": denoise},)


class FakeDecode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"

    def decode(self, samples):
        _count("FakeDecode")
        image = samples["samples"][:, :3].repeat_interleave(4, -1).repeat_interleave(4, -2)
        return (image.permute(0, 2, 3, 1).contiguous(),)


class FakeAlwaysChanged(FakeText):
    @classmethod
    def IS_CHANGED(cls, text):
        return float("nan")

    def make(self, text):
        _count("FakeAlwaysChanged")
        return (text,)


FAKE_CLASSES = {cls.__name__: cls for cls in (FakeLoader, FakeText, FakeSampler, FakeDecode,
                                               FakeAlwaysChanged)}


def ui_workflow(sampler_widgets=None, extra_nodes=(), extra_links=(), version=0.4) -> dict:
    """A UI-format workflow: loader -> sampler <- text; sampler -> decode -> SaveImage."""
    widgets = sampler_widgets if sampler_widgets is not None else [7, "randomize", 3, 2.5, "midpoint", 1.0]
    nodes = [
        {"id": 1, "type": "FakeLoader", "mode": 0, "inputs": [],
         "outputs": [{"name": "FAKE_MODEL", "type": "FAKE_MODEL", "links": [1]}], "widgets_values": [2.0]},
        {"id": 2, "type": "FakeText", "mode": 0, "title": "Prompt", "inputs": [],
         "outputs": [{"name": "STRING", "type": "STRING", "links": [2]}], "widgets_values": ["a cat"]},
        {"id": 3, "type": "FakeSampler", "mode": 0, "title": "Sampler",
         "inputs": [{"name": "model", "type": "FAKE_MODEL", "link": 1},
                    {"name": "text", "type": "STRING", "link": 2},
                    {"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": None}],
         "outputs": [{"name": "LATENT", "type": "LATENT", "links": [3]}], "widgets_values": widgets},
        {"id": 4, "type": "FakeDecode", "mode": 0, "inputs": [{"name": "samples", "type": "LATENT", "link": 3}],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [4]}]},
        {"id": 5, "type": "SaveImage", "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 4}],
         "outputs": [], "widgets_values": ["fake"]},
        {"id": 6, "type": "Note", "mode": 0, "inputs": [], "outputs": [], "widgets_values": ["a note"]},
        *extra_nodes,
    ]
    links = [[1, 1, 0, 3, 0, "FAKE_MODEL"], [2, 2, 0, 3, 1, "STRING"], [3, 3, 0, 4, 0, "LATENT"],
             [4, 4, 0, 5, 0, "IMAGE"], *extra_links]
    if version == 1:
        links = [{"id": link[0], "origin_id": link[1], "origin_slot": link[2], "target_id": link[3],
                  "target_slot": link[4], "type": link[5]} for link in links]
    return {"last_node_id": 6, "last_link_id": 4, "nodes": nodes, "links": links,
            "groups": [{"title": "a group", "bounding": [0, 0, 10, 10]}], "config": {}, "extra": {},
            "version": version}
