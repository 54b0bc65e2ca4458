"""The FLUX autoencoder and the TAEF1 tiny decoder: the latent format, decoding (tiled when
memory is short), encoding, and their files."""
