"""The trainer service: prepare training data, train and evaluate the shape autoencoder."""
