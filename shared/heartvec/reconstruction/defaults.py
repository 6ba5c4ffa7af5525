"""Defaults of a reconstruction, shared by the CLI, the worker and the API (which must not
import torch to know them)."""

RESOLUTION = 256
# refinement: chosen together by bench/refinement.py (BENCHMARKS.md)
REFINE_STEPS = 300
REFINE_LR = 3e-2  # Adam step size
REFINE_TARGET = "context"  # what refinement changes: "context" or "latents"
REFINE_SIGN_WEIGHT = 30.0  # weight of the sign term in the fit loss (0: L1 only)
