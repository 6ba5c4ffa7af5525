"""Defaults of a reconstruction, shared by the CLI, the worker and the API (which must not
import torch to know them)."""

RESOLUTION = 256
# refinement: chosen together by bench/refinement.py (BENCHMARKS.md)
REFINE_STEPS = 400
REFINE_LR = 3e-2  # Adam step size
REFINE_TARGET = "context"  # what refinement changes: "context" or "latents"
REFINE_SIGN_WEIGHT = 30.0  # weight of the sign term in the fit loss (0: L1 only)
# fit points per step, a third on the surface and the rest queries: 400 steps of 1024 fit as
# well as 300 of 1536 on six unseen phantoms and the real heart, at 89% of the time on a CPU
REFINE_POINTS = 1024
# pieces of a class smaller than this fraction of its largest piece are dropped after decoding
MIN_PIECE = 0.1
