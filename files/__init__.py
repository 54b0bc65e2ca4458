"""Reading weight files of any layout (safetensors, shards, folders, checkpoints), key helpers and
the loaders' one exception, shared by every model concept."""
