"""The one adapter between the nodes and their host: ComfyUI when the pack runs inside it, the
pack's own runner otherwise. Only this package imports ComfyUI modules; every function here
falls back to plain behaviour when ComfyUI is absent."""

from .devices import free_memory, torch_device
from .files import (EMBEDDED_DIR, PACK_DIR, confine_to_model_folders, file_choice, headless_models_dirs,
                    inside_comfyui, list_model_files, model_file_problem, paths_allowed, resolve_model_file,
                    share_embedded_with_core)
from .progress import (Interrupted, Progress, check_interrupt, previews_wanted, request_interrupt, set_previews_wanted,
                       set_progress_hook, set_text_hook, show_text)

share_embedded_with_core()   # inside ComfyUI: core's loaders list the embedded files they can read

__all__ = ["EMBEDDED_DIR", "PACK_DIR", "Interrupted", "Progress", "check_interrupt",
           "confine_to_model_folders", "file_choice", "free_memory", "headless_models_dirs",
           "inside_comfyui", "list_model_files", "model_file_problem", "paths_allowed", "previews_wanted",
           "set_previews_wanted", "request_interrupt", "resolve_model_file", "set_progress_hook",
           "set_text_hook", "share_embedded_with_core", "show_text", "torch_device"]
