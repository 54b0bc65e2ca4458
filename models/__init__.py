"""torch modules: the Next-DiT, VAE glue, text-encoder glue. No ComfyUI imports here."""
