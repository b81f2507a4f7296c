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
# # Lab 3 - Sparse tensor cores: 2:4 and the mma.sp metadata
#
# Since Ampere, NVIDIA tensor cores can skip half of the multiplications when the weight
# is **2:4 sparse**: in every aligned group of four weights along K, at most two are
# non-zero. The weight is stored compressed (the two kept values) plus **metadata**
# (where in the group each kept value belongs), and the `mma.sp` instruction does the
# work of a dense instruction twice its size in the same time. This lab takes the
# instruction apart register by register, using the numpy emulation that this project
# checked against silicon (`tvwsim.kernels.mma_sp`, docs/kernels.md), and then asks what
# the 2x buys a whole GEMM - and why it buys nothing on a V100.
#
# **Learning goals.** After this lab you can
#
# 1. prune a matrix to 2:4 by magnitude and say what it costs in storage;
# 2. decode a 2:4 metadata word into the positions of the kept values;
# 3. run an `m16n8k32` sparse mma in the emulator and relate it to a dense product;
# 4. explain with the model why 2:4 (vw) gains nothing without sparse tensor cores, and
#    why a faster sparse tensor core alone stops helping (`sparse_tflop_ratio`).
#
# **Time:** about 45 minutes. Background: docs/kernels.md (mma / mma.sp fragments),
# docs/model.md sections 5.3 and 7.

# %%
# %matplotlib inline
import numpy as np
from tvwsim.kernels.mma_sp import (
    ORDERED_NIBBLES,
    mma_sp_m16n8k32,
    pack_a_sparse,
    pack_b,
    pack_c,
    unpack_d,
)
from tvwsim.kernels.patterns import prune_with_layout
from tvwsim.kernels.pictures import pattern_figure

import tvwsim
from tvwsim.errors import InputError

rng = np.random.default_rng(7)
A = rng.standard_normal((16, 32)).astype(np.float16)  # one weight fragment: 16 rows x K 32
B = rng.standard_normal((32, 8)).astype(np.float16)  # 32 K x 8 tokens

# %% [markdown]
# ## 1. Pruning to 2:4
#
# Magnitude pruning keeps the two largest |w| of every aligned group of four along K.
#
# ### Exercise 1.1
#
# Write `prune_24(w)`: a boolean mask of `w`'s shape (K a multiple of 4) that keeps the
# two largest |w| of each group `w[r, 4g:4g+4]`.


# %% tags=["exercise"]
def prune_24(w):
    """Keep-mask: the 2 largest |w| of every aligned group of 4 along a row. Replace the body."""
    return None


# %% tags=["solution"]
def prune_24(w):
    groups = np.abs(w.astype(np.float64)).reshape(w.shape[0], -1, 4)
    order = np.argsort(-groups, axis=2, kind="stable")[:, :, :2]
    mask = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=2)
    return mask.reshape(w.shape)


# %%
mask = prune_24(A)
library = prune_with_layout(A, "vw", 0.5).mask
assert mask.shape == A.shape and mask.dtype == bool
assert (mask.reshape(16, 8, 4).sum(axis=2) == 2).all(), "two per group"
assert (mask == library).all(), "the same mask as tvwsim's vw pruner"
A24 = np.where(mask, A, 0).astype(np.float16)
print("prune_24 matches the library:", mask.sum(), "of", mask.size, "kept")

# %% [markdown]
# The picture of a larger 2:4 matrix: top, the kept magnitudes; bottom, each kept
# value's position in its group of four - what the metadata stores
# (`tvwsim prune --shape 32,64 --pattern vw,tvw --sparsity 0.5 --plot FILE` draws it too).

# %%
W = tvwsim.synthetic_weight(32, 64, seed=1)
pattern_figure(W, [prune_with_layout(W, "vw", 0.5), prune_with_layout(W, "tvw", 0.75, tile=16)])

# %% [markdown]
# ## 2. Compression and metadata
#
# The compressed A holds the two kept values of each group (16 x 16 instead of 16 x 32).
# For each group, a 4-bit *nibble* says where they were: bits [1:0] the first position,
# bits [3:2] the second, in ascending order (`::ordered_metadata`).
#
# **Predict first.** How many different nibbles can a valid group have? Which value does
# a group that keeps positions 1 and 3 get?

# %% tags=["experiment"]
print("legal ordered nibbles:", [hex(n) for n in ORDERED_NIBBLES])
a_regs, e_regs = pack_a_sparse(A24, selector=0)
print("metadata word of lane 0 (rows 0 and 8, K 0..15):", hex(int(e_regs[0])))

# %% [markdown]
# ### Exercise 2.1
#
# Write `nibble(first, second)`, the 4-bit metadata of a group keeping positions
# `first < second`, and `storage_ratio`: bytes of the compressed fp16 values plus
# metadata over the bytes of the dense fp16 matrix.


# %% tags=["exercise"]
def nibble(first, second):
    """4-bit metadata of one group. Replace the body."""
    return None


storage_ratio = None


# %% tags=["solution"]
def nibble(first, second):
    return first | second << 2


storage_ratio = (2 * 2 + 4 / 8) / (4 * 2)  # per group of 4: two fp16 values + 4 bits

# %%
assert sorted(nibble(a, b) for a in range(4) for b in range(a + 1, 4)) == list(ORDERED_NIBBLES)
word = int(e_regs[0])
for row, half in ((0, word & 0xFFFF), (8, word >> 16)):
    for group in range(4):
        kept = np.flatnonzero(mask[row, 4 * group : 4 * group + 4])
        assert half >> (4 * group) & 0xF == nibble(*kept), (row, group)
assert abs(storage_ratio - 0.5625) < 1e-12
print(f"metadata decoded; a 2:4 weight takes {storage_ratio:.1%} of the dense bytes")

# %% [markdown]
# ## 3. The sparse mma in the emulator
#
# `mma.sp.m16n8k32` multiplies the *logical* 16 x 32 A (reconstructed from the
# compressed values and the metadata) by a 32 x 8 B: the work of two dense m16n8k16
# instructions.
#
# **Predict first.** If we flip one group's metadata from positions (0, 1) to (2, 3)
# but keep the values, does the instruction fail, or silently compute another product?

# %% tags=["experiment"]
c_regs = pack_c(np.zeros((16, 8), dtype=np.float32))
D = unpack_d(mma_sp_m16n8k32(a_regs, pack_b(B), c_regs, e_regs, 0))
exact = A24.astype(np.float64) @ B.astype(np.float64)
print("max |D - A24 @ B| =", float(np.abs(D - exact).max()))

lying = e_regs.copy()
wrong = nibble(2, 3) if int(lying[0]) & 0xF != nibble(2, 3) else nibble(0, 1)
lying[0] = int(lying[0]) & ~0xF | wrong  # row 0, K 0..3: other positions, same values
D_lie = unpack_d(mma_sp_m16n8k32(a_regs, pack_b(B), c_regs, lying, 0))
print("rows changed by the wrong metadata:", np.flatnonzero(np.abs(D_lie - D).max(axis=1) > 0))
try:
    bad = e_regs.copy()
    bad[0] = int(bad[0]) & ~0xF | 0x5  # positions (1, 1): not two distinct ones
    mma_sp_m16n8k32(a_regs, pack_b(B), c_regs, bad, 0)
except InputError as err:
    print("illegal metadata refused:", err)

# %% [markdown]
# A wrong but legal nibble silently moves two values to other K positions - only row 0
# changes. The metadata is as much part of the weight as its values, and the encoder,
# the CPU twin and the kernel must agree on it bit for bit (the one-warp probe in
# `tvwsim kernels check` pins exactly this layout on silicon).
#
# ### Exercise 3.1
#
# The selector picks which lanes supply metadata (0: lanes 4g and 4g+1, 1: lanes 4g+2
# and 4g+3). Pack the same A for selector 1, run the mma with selector 1, and store the
# result as a 16 x 8 array in `D1`.

# %% tags=["exercise"]
D1 = None

# %% tags=["solution"]
a1, e1 = pack_a_sparse(A24, selector=1)
D1 = unpack_d(mma_sp_m16n8k32(a1, pack_b(B), c_regs, e1, 1))

# %%
assert D1 is not None and D1.shape == (16, 8)
np.testing.assert_allclose(D1, D, rtol=0, atol=0)
print("selector 1 gives the same product from other lanes' metadata")

# %% [markdown]
# ## 4. What 2:4 buys a GEMM - and what it does not
#
# The model's `vw` pattern is 2:4 on the whole weight with a `mma.sp` kernel
# (128 x 128 x 64). The preset field `sparse_tflop_ratio` says how much faster mma.sp
# does a tile's logical work than mma: 2 on Ampere and Hopper, 0 (no sparse tensor cores:
# the 2:4 work runs at the dense rate) on Volta and Turing.
#
# **Predict first.** BERT-base FFN1 at batch 32 (4096 x 3072 x 768): what is vw's speedup
# over dense on the A100? On the V100?


# %% tags=["experiment"]
def speedup(hw, m=4096, n=3072, k=768):
    dense = tvwsim.simulate(tvwsim.schedule_for_shape(m, n, k, "dense", 0.0), hw)
    vw = tvwsim.simulate(tvwsim.schedule_for_shape(m, n, k, "vw", 0.5), hw)
    return dense.kernel_us / vw.kernel_us, vw


for name in ("a100", "v100"):
    s, vw = speedup(tvwsim.load_preset(name))
    print(f"{name}: vw {s:.2f}x over dense, {vw.bottleneck} ({vw.bottleneck_detail})")

# %% [markdown]
# **Predict first.** Now build a hypothetical A100 with a 3x, 4x and 8x sparse tensor
# core (`--set sparse_tflop_ratio=4`). Does vw's speedup keep growing?

# %% tags=["experiment"]
ratios = [0, 2, 3, 4, 8]
sweep = [speedup(tvwsim.load_preset("a100", {"sparse_tflop_ratio": r})) for r in ratios]
for r, (s, vw) in zip(ratios, sweep, strict=True):
    print(f"sparse_tflop_ratio {r}: vw {s:.2f}x, {vw.bottleneck} ({vw.bottleneck_detail})")

from matplotlib.figure import Figure

fig = Figure(figsize=(6, 3), layout="constrained")
ax = fig.subplots()
ax.plot(ratios, [s for s, _ in sweep], marker="o")
ax.axhline(1, color="grey", linestyle=":")
ax.set_xlabel("sparse_tflop_ratio (mma.sp speed over mma)")
ax.set_ylabel("vw speedup over dense")
ax.set_title("a100, 4096 x 3072 x 768: the sparse core's gain saturates")
fig

# %% [markdown]
# ### Exercise 4.1
#
# From the sweep, store in `saturated_from` the smallest ratio of `ratios` at which vw's
# speedup is within 1% of its speedup at ratio 8, and in `saturating_resource` the
# bottleneck the model names there ("compute", "memory bandwidth", "latency" or
# "imbalance tail").

# %% tags=["exercise"]
saturated_from = None
saturating_resource = None

# %% tags=["solution"]
top = sweep[-1][0]
saturated_from = next(r for r, (s, _) in zip(ratios, sweep, strict=True) if s >= 0.99 * top)
saturating_resource = dict(zip(ratios, sweep, strict=True))[saturated_from][1].bottleneck

# %%
assert saturated_from in (2, 3)
assert saturating_resource == "memory bandwidth"
print(f"from ratio {saturated_from} on, vw is {saturating_resource}-bound: the L2 cannot")
print("feed the operands any faster, so a faster sparse tensor core buys nothing")

# %% [markdown]
# ## What you saw
#
# - 2:4 magnitude pruning keeps the two largest of every four weights; stored compressed
#   with 2-bit positions it takes 56% of the dense bytes (the tensor core reads both).
# - The metadata is a nibble per group, six legal values when ordered. A wrong but legal
#   nibble computes a different product silently - the encoder, the CPU twin and the
#   kernel must agree on every bit.
# - `mma.sp.m16n8k32` does the logical work of two dense `m16n8k16` in one instruction.
# - Without sparse tensor cores (V100, `sparse_tflop_ratio = 0`) vw's 2:4 kernel runs
#   its logical work at the dense rate, and its metadata and 64-deep stages make it a
#   little *slower* than dense. With them (A100) it gains about 1.6x on BERT FFN1, not 2x.
# - Past 2x the GEMM turns L2-bound: the sparse core's gain saturates. A faster mma alone
#   does not help; the data has to arrive faster too (lab 5 explores that trade).
#
# **Going further.** `tvwsim simulate --hw a100 --shape 4096,4096,4096 --pattern vw --set
# sparse_tflop_ratio=4`: which share names the bottleneck? What if you also double
# `l2_bandwidth_gbps`?
