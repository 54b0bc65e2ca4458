"""The GGUF types the quantize command writes (no torch import: the command line lists them)."""

# Quantised types, best first, then the unquantised GGUF types.
QUANT_TYPES = ("Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K", "Q4_1", "Q4_0", "BF16", "F16")
# Mixes (llama.cpp's "_M" idea): (type of most matrices, type of the sensitive ones; see
# quant/gguf_write.py for which those are).
MIXES = {"Q4_K_M": ("Q4_K", "Q6_K")}
# llama.cpp's LlamaFileType number for each, written as general.file_type.
FILE_TYPES = {"F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q4_K": 15, "Q4_K_M": 15,
              "Q5_K": 17, "Q6_K": 18, "BF16": 32}
