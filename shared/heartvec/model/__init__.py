"""The VecSet shape autoencoder: surface points with classes -> latent set -> per-class SDF."""
