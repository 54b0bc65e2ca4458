"""Run by tests/test_gpu_memory.py in a subprocess with a real ComfyUI importable (``--cpu``):
checks that the pack's models take part in `comfy.model_management` through `PackModelPatcher`.

Usage: python comfy_memory_probe.py COMFYUI_DIR PACK_DIR. Prints "OK" and exits 0 on success.
"""

from __future__ import annotations

import importlib.util
import sys


def _import_pack(pack_dir: str):
    # As ComfyUI loads a custom-node folder: by path, here under the package's own name so the
    # test factories' absolute imports resolve to the same modules.
    spec = importlib.util.spec_from_file_location("nextdit_nodes", f"{pack_dir}/__init__.py",
                                                  submodule_search_locations=[pack_dir])
    module = importlib.util.module_from_spec(spec)
    sys.modules["nextdit_nodes"] = module
    spec.loader.exec_module(module)


def main(comfy_dir: str, pack_dir: str) -> None:
    sys.argv = [sys.argv[0], "--cpu"]
    sys.path.insert(0, comfy_dir)
    sys.path.insert(0, f"{pack_dir}/tests")
    import comfy.options
    comfy.options.enable_args_parsing()
    import comfy.model_management as mm
    import torch

    _import_pack(pack_dir)
    from factories import random_dit, random_inputs, tiny_params
    from nextdit_nodes.dit import offload
    from nextdit_nodes.dit.placement import set_offload_mode
    from nextdit_nodes.nodes import host
    from nextdit_nodes.nodes.host import memory as comfy_memory

    cpu = torch.device("cpu")
    # The manager measures free memory; on a shared CPU machine that moves between two calls, so
    # the probe fixes it: a request of FREE + n bytes asks the loaded models for exactly n bytes.
    free = 8 * 2 ** 30
    mm.get_free_memory = lambda dev=None, torch_free_too=False: (free, free) if torch_free_too else free
    assert host.torch_device() == cpu and comfy_memory.storage_device("auto") == mm.unet_offload_device()
    p = tiny_params()
    model = random_dit(p)
    inputs = random_inputs(p, [5, 7])
    with torch.no_grad():
        expected = model(**inputs)

    # 1. use_model registers the DiT with the manager, once, through its core MODEL (a BaseModel
    #    holding this very module, plus the flow model-sampling tables).
    comfy_memory.use_model(model, memory_required=1000)
    comfy_memory.use_model(model)
    patcher = model.attachments["core_model"]
    assert patcher.model.diffusion_model is model
    size = offload.tensor_bytes(patcher.model)
    assert size > offload.tensor_bytes(model)
    entries = [m for m in mm.current_loaded_models if m.model is patcher]
    assert len(entries) == 1, mm.current_loaded_models
    assert patcher.loaded_size() == size and patcher.model_size() == size

    # 2. Core's free_memory asking for a little: our patcher streams blocks instead of unloading.
    need = size // 3
    mm.free_memory(free + need, cpu)
    assert any(m.model is patcher for m in mm.current_loaded_models), "partially unloaded, still listed"
    assert offload.is_offloaded(model) and patcher.loaded_size() <= size - need, patcher.loaded_size()
    with torch.no_grad():
        assert torch.equal(model(**inputs), expected)

    # 3. Loading it again gives it all its memory back.
    comfy_memory.use_model(model)
    assert not offload.is_offloaded(model) and patcher.loaded_size() == size

    # 4. Asking for more than it has: core unloads it completely (detach).
    mm.free_memory(free + 2 * size, cpu)
    assert not any(m.model is patcher for m in mm.current_loaded_models)
    assert patcher.loaded_size() == 0 and not offload.is_offloaded(model)

    # 5. A low-VRAM grant: load with a budget below the model's size streams what does not fit.
    patcher.load(cpu, lowvram_model_memory=size // 2)
    assert offload.is_offloaded(model) and 0 < patcher.loaded_size() <= size // 2
    with torch.no_grad():
        assert torch.equal(model(**inputs), expected)
    patcher.detach()

    # 6. Mode "none" never streams; the core ModelPatcher API the manager uses still works.
    set_offload_mode(model, "none")
    patcher.load(cpu, lowvram_model_memory=size // 2)
    assert not offload.is_offloaded(model) and patcher.loaded_size() == size
    assert patcher.is_clone(patcher) and not patcher.is_dynamic()

    # 7. Core weight patches (what core's LoRA loaders add) on a clone: applied when the clone
    #    loads, also with streamed blocks; the base loading again restores the weights.
    set_offload_mode(model, "auto")
    key = "diffusion_model.layers.0.attention.qkv.weight"
    weight = model.layers[0].attention.qkv.weight
    clone = patcher.clone()
    clone.add_patches({key: ("diff", (torch.full_like(weight, 0.01),))}, 1.0)
    mm.load_models_gpu([clone])
    assert torch.allclose(model.layers[0].attention.qkv.weight, weight + 0.01)
    with torch.no_grad():
        changed = model(**inputs)
    assert not torch.equal(changed, expected)
    clone.detach()
    clone.load(cpu, lowvram_model_memory=size // 2)
    assert offload.is_offloaded(model)
    with torch.no_grad():
        assert torch.equal(model(**inputs), changed)
    mm.load_models_gpu([patcher])
    assert torch.equal(model.layers[0].attention.qkv.weight, weight) and not offload.is_offloaded(model)
    with torch.no_grad():
        assert torch.equal(model(**inputs), expected)

    # 8. A module without repeated blocks (the VAE; diffusers modules have a read-only `device`):
    #    whole loads and unloads, never streamed.
    class Vae(torch.nn.Sequential):
        @property
        def device(self):
            return next(self.parameters()).device

    vae = Vae(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    vae_attachments = {}
    comfy_memory.use_model(vae, memory_required=10, slot=vae_attachments)
    vae_patcher = vae_attachments["host_patcher"]
    assert vae_patcher.model.module is vae
    assert any(m.model is vae_patcher for m in mm.current_loaded_models)
    assert vae_patcher.loaded_size() == offload.tensor_bytes(vae)
    mm.free_memory(free + 1, cpu, keep_loaded=[m for m in mm.current_loaded_models if m.model is patcher])
    assert vae_patcher.loaded_size() == 0 and not any(m.model is vae_patcher for m in mm.current_loaded_models)
    print("OK")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
