"""The Next-DiT's user-facing settings that are not weights (torch-free, so nodes can show them)."""

# Where the DiT's weights live while it samples (`dit/placement.py`):
#   auto   - the whole DiT on the GPU when it fits in free memory, else its blocks are streamed
#   blocks - the repeated blocks stay in CPU memory and are streamed to the GPU one at a time
#   none   - always the whole DiT on the GPU
OFFLOAD_MODES = ("auto", "blocks", "none")
