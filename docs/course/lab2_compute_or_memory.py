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
# # Lab 2 - Compute or memory? The roofline
#
# Is a GEMM limited by the tensor cores or by the memory that feeds them? The roofline
# answers with one number per GEMM, its **arithmetic intensity** (FLOPs per byte moved
# from DRAM), and two per GPU, its **peak compute** and its **DRAM bandwidth**. This lab
# draws the roofline of the A100 and H100 presets, places every GEMM of BERT-base on
# it, and then finds where the simple picture is not the whole story: skinny GEMMs,
# half-empty GPUs and the L2 cache.
#
# **Learning goals.** After this lab you can
#
# 1. compute a GPU's ridge point and a GEMM's arithmetic intensity by hand;
# 2. say from a roofline whether a GEMM *can* reach the compute peak;
# 3. explain why a GEMM right of the ridge can still run at a few percent of it (too
#    few CTAs), and why a skinny GEMM needs a different kernel;
# 4. measure in the model what L2 residency saves in DRAM traffic and time.
#
# **Time:** about 45 minutes. Background: docs/model.md sections 5.4 (memory) and 6
# (bottleneck); `tvwsim roofline --help` draws the same picture from the command line.

# %%
# %matplotlib inline
from tvwsim.sim.library import choose
from tvwsim.sim.roofline import Roof, RooflinePoint, compulsory_bytes, roofline_figure
from tvwsim.traces.catalog import load_workload

import tvwsim


def dense(m, n, k, hw):
    """The dense GEMM with this project's default 128 x 128 kernel."""
    return tvwsim.simulate(tvwsim.schedule_for_shape(m, n, k, "dense", 0.0), hw)


a100 = tvwsim.load_preset("a100")
h100 = tvwsim.load_preset("h100")

# %% [markdown]
# ## 1. Two roofs
#
# Peak dense tensor-core throughput is `dense_flops_per_clk_per_sm x sm_count x clock`;
# DRAM bandwidth is `dram_bandwidth_gbps`. The **ridge point** is where the two meet:
# `peak FLOP/s / bandwidth B/s`, in FLOP per byte. A GEMM with less intensity than the
# ridge cannot reach the peak, whatever its kernel does.
#
# ### Exercise 1.1
#
# Write `ridge(hw)`: the ridge point of a preset in FLOP per byte (use the fields named
# above; `clock_mhz` is in MHz, `dram_bandwidth_gbps` in GB/s = 1e9 B/s).


# %% tags=["exercise"]
def ridge(hw):
    """FLOP per DRAM byte at which the DRAM roof meets the compute peak. Replace the body."""
    return None


# %% tags=["solution"]
def ridge(hw):
    peak = hw.dense_flops_per_clk_per_sm * hw.sm_count * hw.clock_mhz * 1e6
    return peak / (hw.dram_bandwidth_gbps * 1e9)


# %%
for hw in (a100, h100):
    assert abs(ridge(hw) - Roof.of(hw).ridge) < 1e-6 * Roof.of(hw).ridge, hw.label
print({hw.label: round(ridge(hw)) for hw in (a100, h100)})

# %% [markdown]
# **Predict first.** The H100 has about 3.2x the A100's tensor peak but only 2.2x its
# DRAM bandwidth. Does its ridge move left or right - do *more* or *fewer* GEMMs
# become memory-bound on the newer GPU?

# %% tags=["experiment"]
for hw in (a100, h100):
    roof = Roof.of(hw)
    print(
        f"{hw.label}: peak {roof.peak_tflops:.0f} TFLOP/s, DRAM {roof.dram_tbps:.2f} TB/s, "
        f"L2 {roof.l2_tbps:.1f} TB/s, ridge {roof.ridge:.0f} FLOP/B"
    )

# %% [markdown]
# ## 2. Arithmetic intensity of a GEMM
#
# A dense M x N x K GEMM does 2MNK FLOPs. At the very least it reads X (M x K) and W
# (N x K) once and writes Y (M x N) once, 2 bytes per fp16 element: its *compulsory*
# traffic.
#
# ### Exercise 2.1
#
# Write `intensity(m, n, k)`: FLOPs per compulsory byte.


# %% tags=["exercise"]
def intensity(m, n, k):
    """2MNK over the compulsory fp16 bytes. Replace the body."""
    return None


# %% tags=["solution"]
def intensity(m, n, k):
    return 2 * m * n * k / (2 * (m * k + n * k + m * n))


# %%
for shape in [(128, 768, 768), (4096, 3072, 768), (1, 4096, 4096), (8192, 8192, 8192)]:
    point = RooflinePoint.of(dense(*shape, a100))
    assert abs(intensity(*shape) - point.intensity) < 1e-9 * point.intensity, shape
    assert compulsory_bytes(*shape) == 2 * (
        shape[0] * shape[2] + shape[1] * shape[2] + shape[0] * shape[1]
    )
print("intensity is right; note how it grows with the smallest of M, N, K")

# %% [markdown]
# ## 3. BERT-base on the roofline
#
# BERT-base has six weight GEMMs per layer (Q, K, V, attention-out, FFN1, FFN2) and
# two activation-by-activation products. At sequence 128, batch 1 means M = 128 tokens;
# batch 32 means M = 4096.
#
# **Predict first.** At batch 1, FFN1 is 128 x 3072 x 768. Its intensity is about 106
# FLOP/B. Is it left or right of the A100's ridge? What fraction of the 312 TFLOP/s
# peak do you expect it to reach?


# %% tags=["experiment"]
def bert_points(hw, batch):
    points = {}
    for g in load_workload("bert-base", batch=batch, seq=128).gemms:
        if (g.m, g.n, g.k) not in points:
            points[(g.m, g.n, g.k)] = RooflinePoint.of(
                dense(g.m, g.n, g.k, hw), f"{g.name} b{batch}"
            )
    return list(points.values())


a100_points = bert_points(a100, 1) + bert_points(a100, 32)
for p in a100_points:
    top = Roof.of(a100).attainable(p.intensity)
    print(
        f"{p.name:16s} {p.intensity:7.1f} FLOP/B {p.tflops:6.1f} TFLOP/s "
        f"({p.tflops / top:4.0%} of its roof) {p.bottleneck}"
    )
roofline_figure(Roof.of(a100), a100_points)

# %% [markdown]
# The batch-1 GEMMs sit far *below* the roof, and the model calls them "compute"-bound.
# Both are true: FFN1 at batch 1 has 24 output tiles, so 24 CTAs on 108 SMs. Those 24
# SMs are busy computing; the other 84 have nothing to do. The roofline assumes the
# whole GPU is working - a GEMM must first *fill* the GPU.
#
# ### Exercise 3.1
#
# For each batch-1 GEMM, the fraction of the A100's SMs that get any work is
# `min(1, CTAs / SMs)`. Store the list of these fractions for the batch-1 weight GEMMs
# (attn.q, ffn1, ffn2 shapes: 128x768x768, 128x3072x768, 128x768x3072) in `sm_fill`.

# %% tags=["exercise"]
sm_fill = None  # a list of three fractions

# %% tags=["solution"]
sm_fill = [
    min(1, dense(*s, a100).ctas / a100.sm_count)
    for s in [(128, 768, 768), (128, 3072, 768), (128, 768, 3072)]
]

# %%
assert [round(f, 3) for f in sm_fill] == [round(6 / 108, 3), round(24 / 108, 3), round(6 / 108, 3)]
print("SMs with work:", [f"{f:.0%}" for f in sm_fill])

# %% [markdown]
# **Predict first.** The H100 preset has 132 SMs and a ridge far to the right. Will
# BERT-base at batch 32 reach a larger or a smaller share of its roof on the H100 than
# on the A100?

# %% tags=["experiment"]
h100_points = bert_points(h100, 32)
for p in h100_points:
    top = Roof.of(h100).attainable(p.intensity)
    print(
        f"{p.name:16s} {p.intensity:7.1f} FLOP/B {p.tflops:6.1f} TFLOP/s "
        f"({p.tflops / top:4.0%} of its roof) {p.bottleneck}"
    )
roofline_figure(Roof.of(h100), h100_points)

# %% [markdown]
# ## 4. Skinny GEMMs
#
# Generating text one token at a time multiplies a weight by a handful of tokens: M = 1
# to 64. The intensity of a 4096 x 4096 weight with M tokens is about M FLOP/B, so these
# GEMMs are far left of any ridge: they can at best stream the weight at DRAM speed.
#
# **Predict first.** With M = 16, what does the default 128 x 128 kernel waste? How fast
# should a kernel with a 16-token tile be, relative to the DRAM roof?

# %% tags=["experiment"]
roof = Roof.of(a100)
skinny = []
for m in (1, 16, 64, 256):
    ours = dense(m, 4096, 4096, a100)
    library = choose(a100, m, 4096, 4096, "dense")
    p = RooflinePoint.of(library.result, f"M={m} library")
    skinny += [RooflinePoint.of(ours, f"M={m} ours"), p]
    print(
        f"M={m:4d}: ours {ours.kernel_us:6.1f} us ({ours.bottleneck}), library "
        f"{library.config.name} split {library.split_k}: {library.result.kernel_us:6.1f} us "
        f"({library.result.bottleneck}), {p.tflops / roof.attainable(p.intensity):.0%} of the roof"
    )
roofline_figure(roof, skinny, title="a100: skinny GEMMs, our 128x128 kernel vs a library's pick")

# %% [markdown]
# ### Exercise 4.1
#
# Write `ridge_tokens(n, k, hw)`: the smallest number of tokens M at which an M x N x K
# GEMM's intensity reaches the ridge of `hw` (solve `intensity(M, n, k) = ridge(hw)`
# for M; return it as a float). Below it, batching more tokens is free throughput.


# %% tags=["exercise"]
def ridge_tokens(n, k, hw):
    """M at which intensity(M, n, k) equals ridge(hw). Replace the body."""
    return None


# %% tags=["solution"]
def ridge_tokens(n, k, hw):
    r = ridge(hw)
    # M n k / (M k + n k + M n) = r  ->  M (n k - r k - r n) = r n k
    return r * n * k / (n * k - r * (n + k))


# %%
for hw in (a100, h100):
    m = ridge_tokens(4096, 4096, hw)
    assert abs(intensity(m, 4096, 4096) - ridge(hw)) < 1e-6 * ridge(hw)
print(
    f"a100: {ridge_tokens(4096, 4096, a100):.0f} tokens, "
    f"h100: {ridge_tokens(4096, 4096, h100):.0f} tokens"
)

# %% [markdown]
# ## 5. What L2 residency buys
#
# A 128 x 128 tile reads a 128-row panel of W and a 128-token panel of X. CTAs that run
# at the same time share panels; when the panels stay in L2, each byte comes from DRAM
# once. The A100 preset has a 40 MB L2. FFN1 at batch 32 (4096 x 3072 x 768) has 6 MB
# of W, 6 MB of X and 24 MB of Y.
#
# **Predict first.** Shrink the L2 to 1 MB (`--set l2_bytes=1048576`). How many times
# the compulsory bytes will come from DRAM, and will the GEMM get slower?

# %% tags=["experiment"]
rows = []
for l2 in (40 * 2**20, 8 * 2**20, 2 * 2**20, 2**20):
    hw = tvwsim.load_preset("a100", {"l2_bytes": l2})
    r = dense(4096, 3072, 768, hw)
    rows.append((l2, r))
    print(
        f"L2 {l2 / 2**20:4.0f} MB: {r.kernel_us:6.1f} us, DRAM {r.dram_bytes / 1e6:6.1f} MB "
        f"({r.dram_bytes / compulsory_bytes(4096, 3072, 768):.2f}x compulsory), "
        f"L2 hit rate {r.l2_hit_rate:.0%}, {r.bottleneck}"
    )

# %% [markdown]
# ### Exercise 5.1
#
# With the 1 MB L2, what share of the DRAM bytes are *re-reads* (bytes beyond the
# compulsory ones)? Store it in `reread_share`.

# %% tags=["exercise"]
reread_share = None

# %% tags=["solution"]
small = rows[-1][1]
reread_share = 1 - compulsory_bytes(4096, 3072, 768) / small.dram_bytes

# %%
assert reread_share is not None
assert abs(reread_share - (1 - compulsory_bytes(4096, 3072, 768) / rows[-1][1].dram_bytes)) < 1e-9
assert reread_share > 0.5
print(f"{reread_share:.0%} of the DRAM traffic re-reads what a large L2 would have kept")

# %% [markdown]
# ## What you saw
#
# - The A100's ridge is about 200 FLOP/B, the H100's about 300: each GPU generation
#   adds compute faster than bandwidth, so more GEMMs end up left of the ridge.
# - BERT-base's weight GEMMs are right of the A100's ridge from a few hundred tokens on,
#   and at batch 32 they reach most of the achievable roof. At batch 1 they are far below
#   it, and not for lack of bandwidth: 6 to 24 CTAs leave most SMs idle. A roofline
#   point says what is *possible*, the bottleneck what *happened*.
# - On the H100 the same batch-32 GEMMs reach a smaller share of a higher roof (33-51%):
#   this project's 128 x 128 mma.sync kernel reads its operands through an L2 that cannot
#   keep up with the faster tensor cores, and the waves of 132 SMs leave tails. A
#   library's warpgroup-MMA kernel does better (`--config auto`).
# - Skinny GEMMs (M <= 64) are DRAM-bound by nature; a kernel with a 128-token tile
#   spends 7/8 or more of its tensor work on padding, while a library's narrow tile with
#   split-K runs near the DRAM roof.
# - L2 residency turns re-reads into hits: with a 1 MB L2 the same GEMM moves about 3x the
#   compulsory bytes from DRAM and becomes bandwidth-bound.
#
# **Going further.** `tvwsim roofline bert-base --hw h100 --batch 32 --config auto
# --plot roof.png`; try `--set dram_bandwidth_gbps=...` to move the ridge.
