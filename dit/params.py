"""Next-DiT hyper-parameters: what the shapes of a checkpoint tell, plus the official fixed rules."""

from __future__ import annotations

from dataclasses import dataclass

# The model's repeated transformer blocks, by attribute name, in the order the forward runs them:
# the caption-only refiners, the image-only refiners, then the joint layers. Every state-dict key
# of a block starts with one of these and its index (`layers.3.attention.qkv.weight`).
BLOCK_LISTS = ("context_refiner", "noise_refiner", "layers")
BLOCK_KEY = rf"(?:{'|'.join(BLOCK_LISTS)})\.\d+"    # a block's key prefix, as a regex
# The attention and feed-forward Linear layers of every block (names inside the block): the layers
# a LoRA adapts unless told otherwise (train-lora, distill, and the official LoRA trainer).
LORA_TARGETS = ("attention.qkv", "attention.out", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")


@dataclass(frozen=True)
class NextDiTParams:
    dim: int                      # token width (2304 for NewBie / Lumina-2)
    n_layers: int                 # joint blocks (`layers.N`)
    n_heads: int                  # query heads
    n_kv_heads: int               # key/value heads (GQA)
    ffn_dim: int                  # feed_forward hidden width (w1/w3 rows)
    cap_dim: int                  # caption feature width (Gemma hidden, 2560)
    clip_dim: int | None = None   # pooled Jina width (1024); None for Lumina-2 shaped weights
    in_channels: int = 16
    patch_size: int = 2
    n_refiner_layers: int = 2     # noise_refiner and context_refiner blocks each
    guidance_embed: bool = False  # guidance-distilled weights carry `guidance_embedder.*`
    # Fixed by rule (the official code's constants), never read from a file:
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5        # every RMSNorm (apex FusedRMSNorm default in official training)
    t_embed_freq_dim: int = 256   # sinusoid width of the time (and guidance) embedding

    def __post_init__(self):
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 6:
            raise ValueError(f"head_dim {self.head_dim} must split into three equal even RoPE axes "
                             f"(a multiple of 6)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def adaln_dim(self) -> int:
        """Width of the time/conditioning vector that drives every modulation: min(dim, 1024)."""
        return min(self.dim, 1024)

    @property
    def axes_dims(self) -> tuple[int, int, int]:
        """RoPE axes (caption index, row, column): head_dim in three equal even parts."""
        third = self.head_dim // 3
        return (third, third, third)
