"""Defaults of a reconstruction, shared by the CLI, the worker and the API (which must not
import torch to know them)."""

RESOLUTION = 256
# refinement: chosen together by bench/refinement.py (BENCHMARKS.md)
REFINE_STEPS = 400
REFINE_LR = 3e-2  # Adam step size
REFINE_FINAL_LR = 1.0  # the step size at the last step, as a fraction of REFINE_LR (cosine)
REFINE_TARGET = "context"  # what refinement changes: "context" or "latents"
REFINE_SIGN_WEIGHT = 30.0  # weight of the sign term in the fit loss (0: L1 only)
# fit points per step, a third on the surface and the rest queries: on six unseen phantoms and
# the real heart (stage-4 checkpoint), 400 steps of 768 fit 0.900 / 0.914 mean Dice against
# 0.901 / 0.918 for 1024, in 81% of the time on a CPU (14.8 vs 18.2 s on a 2-core AVX2 EPYC)
REFINE_POINTS = 768
# pieces of a class smaller than this fraction of its largest piece are dropped after decoding
MIN_PIECE = 0.1
