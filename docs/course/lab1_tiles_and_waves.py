# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lab 1 - Tiles and waves
#
# A GPU GEMM is cut into output tiles; each tile is one CTA (thread block); the CTAs
# run on the SMs in *waves*. This lab builds that picture from the model's own
# numbers and ends with the surprise every GPU programmer meets once: **adding one
# CTA can cost a whole wave.**
#
# **Learning goals.** After this lab you can
#
# 1. compute how many CTAs a GEMM launches for a given tile shape;
# 2. read an occupancy report: which resource (threads, registers, shared memory,
#    CTA slots) limits the CTAs resident on one SM, and change it;
# 3. predict the number of waves and the wave efficiency of a launch;
# 4. explain, from a timeline, why 9 CTAs on 8 SMs take twice as long as 8.
#
# **Time:** about 40 minutes. Every experiment runs in a second or two.
#
# **How to work.** Before every experiment there is a *Predict first* question: write
# your guess down (in the cell or on paper) before you run the cell. Exercises are
# checked by an `assert` cell right after them: when it passes, you are right.
#
# Background: docs/model.md sections 1 (tiles), 4 (occupancy) and 6 (waves,
# bottleneck).

# %%
# %matplotlib inline
import math

import numpy as np
from tvwsim.sim.occupancy import estimate_resources, occupancy
from tvwsim.sim.timeline import timeline_figure, utilisation_figure

import tvwsim
from tvwsim.config import KernelConfig


def run(m, n, k, hw, pattern="dense", sparsity=0.0, **options):
    """Simulate one M x N x K GEMM (Y = X @ W.T, W is N x K) on `hw`."""
    schedule = tvwsim.schedule_for_shape(m, n, k, pattern, sparsity, **options)
    return tvwsim.simulate(schedule, hw), schedule


a100 = tvwsim.load_preset("a100")
print(a100.label, "-", a100.sm_count, "SMs at", a100.clock_mhz, "MHz")

# %% [markdown]
# ## 1. Tiles and CTAs
#
# The GEMM is `Y (M x N) = X (M x K) @ W.T`. The default dense kernel is
# `128x128x32s3w4`: each CTA computes a tile of **bm = 128 weight rows** (along N) x
# **bn = 128 tokens** (along M), walking K in stages of 32, with a 3-stage pipeline and
# 4 warps. A partial edge tile still costs a whole CTA.
#
# **Predict first.** How many CTAs does a 1000 x 3000 x 768 GEMM launch with 128 x 128
# tiles? (Write the number down.)

# %% tags=["experiment"]
result, schedule = run(1000, 3000, 768, a100)
print("CTAs launched:", result.ctas, "- kernel", schedule.config.name)

# %% [markdown]
# ### Exercise 1.1
#
# Write `n_ctas(m, n, bm=128, bn=128)`: the number of CTAs of an M x N output cut into
# bm (along N) x bn (along M) tiles.


# %% tags=["exercise"]
def n_ctas(m, n, bm=128, bn=128):
    """CTAs of an M x N output with bm x bn tiles. Replace the body."""
    return None


# %% tags=["solution"]
def n_ctas(m, n, bm=128, bn=128):
    return math.ceil(n / bm) * math.ceil(m / bn)


# %%
# Check: your formula against the model's launch, for a few shapes.
for m, n in [(1000, 3000), (128, 128), (129, 128), (4096, 768), (16, 4096)]:
    simulated, _ = run(m, n, 256, a100)
    assert n_ctas(m, n) == simulated.ctas, (m, n, n_ctas(m, n), simulated.ctas)
print("n_ctas is right")

# %% [markdown]
# ## 2. Occupancy: how many CTAs fit on one SM
#
# A resident CTA holds threads, registers and shared memory for its whole life, and one
# of the SM's CTA slots. The smallest quotient is the occupancy; the resource that gives
# it is the *limiter*.
#
# **Predict first.** The default kernel has 4 warps (128 threads) and a 3-stage pipeline
# of 128 x 32 weight + 32 x 128 activation fp16 tiles (48 KB of shared memory). The A100
# has 164 KB of shared memory, 64 K registers and 2048 threads per SM. Which resource
# limits it, and to how many CTAs?

# %% tags=["experiment"]
default = KernelConfig.from_name("128x128x32s3w4")
resources = estimate_resources(default)
occ = occupancy(a100, resources)
print(
    f"{default.name}: {resources.registers_per_thread} registers/thread,",
    f"{resources.smem_bytes} B shared memory per CTA",
)
print(f"-> {occ.ctas_per_sm} CTAs per SM, limited by {occ.limited_by}")
for name, limit in occ.per_resource:
    print(f"   {name:14s} would allow {limit}")

# %% [markdown]
# **Predict first.** More pipeline stages hide more latency but need more shared
# memory. From how many stages on does shared memory, not registers, become the
# limiter, and what is the occupancy then?

# %% tags=["experiment"]
for stages in range(2, 8):
    config = KernelConfig(128, 128, 32, 4, stages, "dense")
    o = occupancy(a100, estimate_resources(config))
    print(f"{config.name}: {o.ctas_per_sm} CTA(s)/SM, limited by {o.limited_by}")

# %% [markdown]
# ## 3. Waves
#
# The GPU has `SMs x CTAs per SM` slots. A launch with more CTAs than slots runs in
# waves: `waves = ceil(CTAs / slots)`. The *wave efficiency* is the fraction of the
# slot-waves that do work: `CTAs / (waves x slots)`.
#
# ### Exercise 3.1
#
# Write `n_waves(ctas, sms, ctas_per_sm)` and `wave_efficiency(ctas, sms, ctas_per_sm)`.


# %% tags=["exercise"]
def n_waves(ctas, sms, ctas_per_sm):
    """Number of waves. Replace the body."""
    return None


def wave_efficiency(ctas, sms, ctas_per_sm):
    """Fraction of the slot-waves that hold a CTA. Replace the body."""
    return None


# %% tags=["solution"]
def n_waves(ctas, sms, ctas_per_sm):
    return math.ceil(ctas / (sms * ctas_per_sm))


def wave_efficiency(ctas, sms, ctas_per_sm):
    return ctas / (n_waves(ctas, sms, ctas_per_sm) * sms * ctas_per_sm)


# %%
for n in (3328, 3456, 3584):
    simulated, _ = run(1024, n, 1024, a100)
    assert n_waves(simulated.ctas, a100.sm_count, simulated.ctas_per_sm) == simulated.waves
assert wave_efficiency(217, 108, 2) == 217 / 432
print("n_waves and wave_efficiency are right")

# %% [markdown]
# ## 4. Wave quantisation on a toy GPU
#
# Make the GPU tiny so the effect is plain: 8 SMs, one CTA per SM (`--set sm_count=8
# --set max_ctas_per_sm=1` on the command line). M = 128 tokens, K = 2048; N grows one
# tile (128 rows) at a time, so the CTA count grows by one.
#
# **Predict first.** With 8 CTAs the kernel takes about 28 us. How long with 9? With 16?
# With 17? Sketch the curve of time against CTAs before you run the cell.

# %% tags=["experiment"]
toy = tvwsim.load_preset("a100", {"sm_count": 8, "max_ctas_per_sm": 1})
ctas, times = [], []
for tiles in range(1, 26):
    simulated, _ = run(128, 128 * tiles, 2048, toy)
    ctas.append(simulated.ctas)
    times.append(simulated.kernel_us)

from matplotlib.figure import Figure  # noqa: E402 (a notebook imports where it needs)

fig = Figure(figsize=(7, 3.2), layout="constrained")
ax = fig.subplots()
ax.step(ctas, times, where="mid", marker="o")
for wave in range(1, 4):
    ax.axvline(8 * wave + 0.5, color="grey", linestyle=":")
ax.set_xlabel("CTAs (one per 128-row weight tile)")
ax.set_ylabel("kernel time (us)")
ax.set_title("8 SMs, 1 CTA per SM: time goes up in whole waves")
fig

# %% [markdown]
# The timeline shows why: every CTA is a bar on its SM; the ninth CTA runs alone while
# seven SMs idle (the dashed line is where the tail starts). The top panel counts busy
# SMs over time.

# %%
nine, nine_schedule = run(128, 9 * 128, 2048, toy)
print(f"9 CTAs: {nine.waves} waves, {nine.kernel_us:.1f} us, bottleneck {nine.bottleneck}")
timeline_figure(nine, schedule=nine_schedule)

# %% [markdown]
# ### Exercise 4.1
#
# From the curve: what fraction of the 9-CTA launch's SM-time is idle? Compute it from
# the result's CTA intervals (`result.cta_start_cycles`, `result.cta_end_cycles`,
# `result.kernel_cycles`, `result.sm_count`) and store it in `idle_share`.

# %% tags=["exercise"]
idle_share = None  # your number, 0..1

# %% tags=["solution"]
busy = float(np.sum(nine.cta_end_cycles - nine.cta_start_cycles))
idle_share = 1 - busy / (nine.kernel_cycles * nine.sm_count)

# %%
assert idle_share is not None and 0.40 < idle_share < 0.50, idle_share
assert abs(idle_share - (1 - wave_efficiency(9, 8, 1))) < 0.02
print(f"idle share {idle_share:.2f}: 7 of the 16 slot-waves do nothing")

# %% [markdown]
# ## 5. The same on the real A100
#
# On the A100 the default kernel has 108 x 2 = 216 slots. M = 1024 tokens is 8 token
# blocks, so every 128 rows of N add 8 CTAs.
#
# ### Exercise 5.1
#
# **Predict first**, then find it: the largest N (a multiple of 128) that still runs in
# one wave with M = 1024, K = 4096. Store it in `largest_one_wave_n`, and the time
# ratio of the next N (one more 128-row tile) to it in `next_tile_cost`.

# %% tags=["exercise"]
largest_one_wave_n = None
next_tile_cost = None

# %% tags=["solution"]
largest_one_wave_n = 128 * (a100.sm_count * 2 // 8)
one, _ = run(1024, largest_one_wave_n, 4096, a100)
more, _ = run(1024, largest_one_wave_n + 128, 4096, a100)
next_tile_cost = more.kernel_us / one.kernel_us

# %%
at, _ = run(1024, largest_one_wave_n, 4096, a100)
after, _ = run(1024, largest_one_wave_n + 128, 4096, a100)
assert at.waves == 1 and after.waves == 2, (at.waves, after.waves)
assert abs(next_tile_cost - after.kernel_us / at.kernel_us) < 1e-6
print(
    f"N = {largest_one_wave_n}: {at.kernel_us:.0f} us; one tile more: "
    f"{after.kernel_us:.0f} us ({next_tile_cost:.2f}x for {8 / at.ctas:.1%} more work)"
)

# %% [markdown]
# **Predict first.** The second wave holds only 8 CTAs, one per SM on 8 SMs. Why is the
# extra time about half a wave, not a whole one? (Hint: two co-resident CTAs share an
# SM's tensor cores; docs/model.md section 5.3.)

# %% tags=["experiment"]
print(f"one wave: {at.kernel_us:.1f} us with 2 CTAs per SM sharing the tensor cores")
print(f"extra wave: {after.kernel_us - at.kernel_us:.1f} us for CTAs running alone on an SM")

# %% [markdown]
# The per-SM utilisation picture of the launch with one tile more (`tvwsim timeline ...
# --utilisation FILE`): each row an SM, each column a slice of time, the colour the share
# of the SM's two CTA slots that are busy. The first wave fills everything; in the second,
# 8 SMs hold one CTA each (half their slots) and 100 SMs idle.

# %%
utilisation_figure(after, bins=50)

# %% [markdown]
# ## What you saw
#
# - A GEMM launches `ceil(N / bm) x ceil(M / bn)` CTAs; edge tiles cost a full CTA.
# - Occupancy is the smallest of four quotients. The default kernel is limited by
#   registers to 2 CTAs per SM on the A100; from 6 stages on shared memory takes over
#   and halves it.
# - Time grows in **waves**: on 8 single-slot SMs, CTAs 9-16 cost as much as CTA 9
#   alone. The ninth CTA's wave is 7/8 idle - the *tail* in the timeline.
# - On a real GPU the step is softer but still there: 8 more CTAs (4% more work) cost
#   about 50% more time, because the last wave's CTAs run alone (at double speed) on 8
#   of 108 SMs.
#
# **Going further.** Try `tvwsim timeline --hw a100 --set sm_count=8 --set
# max_ctas_per_sm=1 --shape 128,1152,2048 --pattern dense --out waves.png`. Which tile
# size would make the 3584-row GEMM fit in one wave? (A library picks its tile for
# exactly this reason: `tvwsim simulate --config auto`, docs/model.md 5.6.)
