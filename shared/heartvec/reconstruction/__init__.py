"""Reconstruction: a label volume in, per-class SDF from the autoencoder, labelled meshes out."""
