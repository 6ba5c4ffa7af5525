"""Defaults of a reconstruction, shared by the CLI, the worker and the API (which must not
import torch to know them)."""

RESOLUTION = 256
# the input's class surfaces (encoder points, refinement targets, supports, surface metrics) are
# extracted on blocks of voxels at most this wide: a CT scan's 0.35-0.5 mm voxels give the model
# nothing a 1 mm grid does not (bench/working_resolution.py), at several times the triangles
WORKING_MM = 1.0
# frame search (frame_search.py): frames scored against the input before encoding (0: none);
# the compass search's first steps of the centre (mm) and of the scale (a fraction), halved
# twice: 5 mm / 5% halved once got stuck short of the best on held-out real B (scores of 4 cases,
# BENCHMARKS.md "Frame search in reconstruct")
FRAME_SEARCH = 0
FRAME_STEP_MM = 10.0
FRAME_SCALE_STEP = 0.1
FRAME_HALVINGS = 2
# refinement: chosen together by bench/refinement.py (its figures: BENCHMARKS.md); the steps
# again with the fit points balanced per class (bench/checkpoints.py --tag steps): 400 -> 800
# lifted held-out real B 0.936 -> 0.950 mean Dice, HD95 2.2 -> 1.8 mm, the pulmonary veins
# 0.67-0.83 -> 0.78-0.87, at a third more time on a CPU (25 -> 33 s); 1000 gained 0.003-0.008
# more for another 8 s
REFINE_STEPS = 800
REFINE_LR = 3e-2  # Adam step size
REFINE_FINAL_LR = 1.0  # the step size at the last step, as a fraction of REFINE_LR (cosine)
REFINE_TARGET = "context"  # what refinement changes: "context" or "latents"
REFINE_SIGN_WEIGHT = 30.0  # weight of the sign term in the fit loss (0: L1 only)
# fit points per step, a third on the surface and the rest queries: 768 fit about as well as
# 1024 in less time on a CPU with 400 steps and the fit points by area (bench/refinement.py); with
# 800 steps balanced per class, 1536 lifted every case (held-out real B 0.950 -> 0.957, HD95 1.80
# -> 1.59 mm; the pulmonary veins on unseen phantoms 0.87/0.78 -> 0.91/0.86) at 1.45x the time on
# a 2-core CPU (bench/checkpoints.py --tag points)
REFINE_POINTS = 1536
# the share of the fit's surface points split evenly among the classes (the rest by area): by
# area a vena cava (2-4% of a heart's surface) is barely fitted; 1 lifted the caval and pulmonary
# veins and the mean (bench/checkpoints.py --tag class_balance, BENCHMARKS.md)
REFINE_CLASS_BALANCE = 1.0
# near-surface and as many volume points with their exact SDF (and twice as many surface points)
# drawn from the input for the fit (and a quarter as many more of each kind held out to measure
# it): the steps draw their minibatches from them, so this is how many distinct places of a thin
# vessel the fit sees. 8192 -> 32768 lifted every case over three seeds (held-out real B 0.957
# -> 0.961, the pulmonary veins of unseen phantom 5001 0.84-0.90 -> 0.88-0.91) for +5% of a CPU
# reconstruction's time; 65536 gained 0.001-0.002 more for +13% (bench/checkpoints.py --tag
# target_points)
REFINE_TARGET_POINTS = 32768
# the share of a refinement step's SDF queries drawn near the surfaces, the rest from the volume
# points around them. With the fit's full pool, 0.75 and 1 were the same within three seeds on
# the real hearts and unseen phantoms, and 1 a little better on a coarse phantom's veins; 0.5
# (measured with a smaller pool) cost the pulmonary veins up to 0.15 (bench/checkpoints.py --tag
# near_share)
REFINE_NEAR_SHARE = 1.0
# the refinement steps' forward passes: "fp32" or "bf16" (autocast; `--precision bf16`). On a
# 2-core EPYC with AVX512-BF16, bf16 took 0.69x the time of a whole reconstruction (37.3 -> 25.6
# s) for -0.0005 to -0.002 mean Dice on 256^3 phantoms and real hearts over three seeds, and on
# a coarse phantom (1.8 mm, resolution 128) its pulmonary veins were 0.83-0.87 (fp32 0.84-0.88):
# opt-in (bench/checkpoints.py --tag refine_bf16)
REFINE_PRECISION = "fp32"
# pieces of a class smaller than this fraction of its largest piece are dropped after decoding
MIN_PIECE = 0.1
