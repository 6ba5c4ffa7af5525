"""Defaults of a reconstruction, shared by the CLI, the worker and the API (which must not
import torch to know them)."""

RESOLUTION = 256
REFINE_STEPS = 20  # chosen by bench/reconstruct.py within the latency target (BENCHMARKS.md)
REFINE_LR = 8e-2  # Adam step size on the latent set (bench/refinement.py)
