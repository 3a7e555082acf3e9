"""Training ADM models from scratch (guided-diffusion objective) and the built-in default model."""
