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
# # Lab 4 - Tile-wise sparsity and its tail
#
# Tile-wise sparsity (**tw**, Guo et al.) prunes a weight so that a tensor-core kernel can
# still run it: the output rows are cut into tiles of G = 128, and each tile keeps only
# some K columns - its *kept-K*. A CTA of tile t gathers those columns' activations and
# does dense mma on them, so its work is proportional to its kept-K. **tvw** adds 2:4
# on top, to run on the sparse tensor cores (lab 3).
#
# The catch: a global magnitude ranking keeps more K in some tiles than in others, so
# CTAs are unequal, and the heaviest ones can run alone at the end - the **tail**. This
# lab measures that imbalance on a real trained weight (MiniLM-L6, in
# `traces/pruned/minilm.json.gz`) and tries the schedule policies that recover it.
#
# **Learning goals.** After this lab you can
#
# 1. read the kept-K of every tile from a real pruned-weight trace and quantify its
#    imbalance;
# 2. explain with a timeline why an unbalanced launch ends in a tail;
# 3. implement the longest-first policy and say when it, or split-K, recovers the tail -
#    and when it cannot;
# 4. compare tw and tvw on the same real structure.
#
# **Time:** about 50 minutes. Background: docs/model.md sections 2-3 (tile work,
# policies), docs/real-weights.md (the traces), docs/whole-models.md section 3 (scaling a
# trace to a full-size layer).

# %%
# %matplotlib inline
import numpy as np
from matplotlib.figure import Figure
from tvwsim.kernels.prepare import mask_work
from tvwsim.sim.model_traces import profile_from_entry
from tvwsim.sim.timeline import timeline_figure, utilisation_figure
from tvwsim.sim.trace_work import trace_tile_work
from tvwsim.traces.trace_files import load_trace

import tvwsim

trace = load_trace("minilm")
layer = trace.layer("layer4.ffn1")
print(f"{layer.name}: {layer.n} x {layer.k} ({layer.tensor})")

# %% [markdown]
# ## 1. Kept-K per tile in a real weight
#
# The trace stores, for every layer, pattern and sparsity, the kept-K count of every
# tile (and for tvw the length of the K list before 2:4, the list a tile gathers).
#
# **Predict first.** MiniLM's FFN1 weight is 1536 x 384. At 75% tile-wise sparsity
# with G = 128, how many tiles survive, and how unequal do you expect their kept-K to be
# (heaviest over mean)?

# %% tags=["experiment"]
fig = Figure(figsize=(9, 3), layout="constrained")
axes = fig.subplots(1, 3, sharey=True)
for ax, sparsity in zip(axes, (0.5, 0.75, 0.875), strict=True):
    kept = trace.kept_k(layer.name, "tw", sparsity)
    print(f"tw {sparsity}: {len(kept)} tiles, kept-K {kept.tolist()}")
    ax.bar(range(len(kept)), kept)
    ax.axhline(kept.mean(), color="black", linestyle=":")
    ax.set_title(f"tw {sparsity:.1%}", fontsize=9)
    ax.set_xlabel("tile")
axes[0].set_ylabel("kept K of 384")
fig

# %% [markdown]
# ### Exercise 1.1
#
# Write `imbalance(kept)`: the heaviest tile's kept-K over the mean kept-K. In a
# single wave, this is roughly how much longer the launch takes than a perfectly
# balanced one with the same work.


# %% tags=["exercise"]
def imbalance(kept):
    """max / mean of the per-tile kept-K. Replace the body."""
    return None


# %% tags=["solution"]
def imbalance(kept):
    kept = np.asarray(kept, dtype=float)
    return float(kept.max() / kept.mean())


# %%
assert imbalance([100, 100, 100, 100]) == 1.0
assert abs(imbalance([64] * 14 + [576] * 2) - 576 / 128) < 1e-12
worst = max(
    (imbalance(trace.kept_k(other.name, "tw", s)), other.name, s)
    for other in trace.layers
    for s in (0.5, 0.75, 0.875)
    if len(trace.kept_k(other.name, "tw", s)) > 2
)
print(f"most imbalanced MiniLM layer: {worst[1]} at {worst[2]}: {worst[0]:.2f}x the mean")

# %% [markdown]
# Real weights are mildly imbalanced: in FFN1 the heaviest tile keeps 10-25% more K than
# the mean, in the worst MiniLM layer about 1.7x. To see the mechanism plainly, first
# exaggerate it.
#
# ## 2. The tail, exaggerated
#
# Sixteen tiles: fourteen keep 64 K, two keep 576 (as in docs/model.md section 10). The
# values of the weights do not matter for the work, only the mask, so we build the mask
# directly and let the real encoder measure its work. M = 512 tokens (4 token blocks),
# on an A100 shrunk to 16 SMs so that all 64 CTAs are resident at once.
#
# **Predict first.** With the natural order (tile by tile), the two heavy tiles' CTAs
# are dispatched last. What does the busy-SM curve look like, and what share of the
# kernel time is tail? What changes with longest-first?

# %% tags=["experiment"]
kept_toy = [64] * 14 + [576] * 2
mask = np.zeros((128 * len(kept_toy), max(kept_toy)), dtype=bool)
for t, c in enumerate(kept_toy):
    mask[t * 128 : (t + 1) * 128, :c] = True
toy_work = mask_work(mask, "tw")
small_gpu = tvwsim.load_preset("a100", {"sm_count": 16})
toy = {}
for policy in ("natural", "longest-first", "split"):
    schedule = tvwsim.build_schedule(toy_work, 512, policy)
    toy[policy] = (tvwsim.simulate(schedule, small_gpu), schedule)
    r = toy[policy][0]
    print(
        f"{policy:14s} {r.ctas:3d} CTAs {r.kernel_us:6.2f} us, "
        f"tail {r.tail_share:.0%}, {r.bottleneck}"
    )
timeline_figure(toy["natural"][0], schedule=toy["natural"][1], sparsity=0.75)

# %% [markdown]
# The two dark (heavy) tiles' CTAs run last. Longest-first starts them first, so the
# light CTAs fill in around them; split cuts each heavy tile into about-median pieces
# that run on different SMs at once, then adds the partial sums (an fp32 reduction the
# model charges).

# %%
timeline_figure(toy["longest-first"][0], schedule=toy["longest-first"][1], sparsity=0.75)

# %% [markdown]
# ### Exercise 2.1
#
# Implement the longest-first policy yourself: `longest_first(k_lengths)` returns the
# order in which the weight tiles are dispatched - heaviest first, ties in their natural
# (index) order. Your order must be the one `tvwsim.build_schedule` uses: the checking
# cell reads it from the schedule's task array (column 0 is the weight tile of each CTA,
# in launch order).


# %% tags=["exercise"]
def longest_first(k_lengths):
    """Tile indices, heaviest first, stable. Replace the body."""
    return None


# %% tags=["solution"]
def longest_first(k_lengths):
    return [int(t) for t in np.argsort(-np.asarray(k_lengths), kind="stable")]


# %%
tasks = toy["longest-first"][1].tasks
launch_order = list(dict.fromkeys(int(t) for t in tasks[:, 0]))
assert longest_first(toy_work.k_lengths) == launch_order
assert longest_first([3, 9, 9, 1]) == [1, 2, 0, 3]
print("your policy is the library's: tiles", launch_order[:4], "... go first")

# %% [markdown]
# ## 3. The real structure, full size
#
# Now the real thing: MiniLM layer 4's FFN1 structure scaled to BERT-base's FFN1 (3072 x
# 768; the kept-K fractions are kept, docs/whole-models.md 3), at 87.5%, for M = 1024
# tokens (batch 8), on an A100 with 32 SMs - a GPU a little smaller than the launch.
#
# **Predict first.** The imbalance is now only about 1.25x. Will longest-first still
# gain something for tvw? Will split?


# %% tags=["experiment"]
def bert_ffn1_work(pattern, sparsity):
    entry = layer.entry(pattern, sparsity)
    profile = profile_from_entry("MiniLM-L6 trace", layer.name, layer.n, layer.k, entry)
    return trace_tile_work(profile, 3072, 768, sparsity)


gpu32 = tvwsim.load_preset("a100", {"sm_count": 32})
dense = tvwsim.simulate(tvwsim.schedule_for_shape(1024, 3072, 768, "dense", 0.0), gpu32)
real = {}
for pattern in ("tw", "tvw"):
    work = bert_ffn1_work(pattern, 0.875)
    print(f"{pattern}: kept-K per tile (padded to whole stages) {work.k_lengths.tolist()}")
    for policy in ("natural", "longest-first", "split"):
        schedule = tvwsim.build_schedule(work, 1024, policy)
        r = tvwsim.simulate(schedule, gpu32)
        real[pattern, policy] = (r, schedule)
        print(
            f"   {policy:14s} {r.kernel_us:6.2f} us = {dense.kernel_us / r.kernel_us:4.2f}x dense, "
            f"tail {r.tail_share:.0%}, {r.bottleneck}"
        )

# %% [markdown]
# The per-SM utilisation picture puts the two orders of tvw side by side: each row an
# SM, each column a slice of time, the colour how many of its CTA slots were busy.

# %%
utilisation_figure(real["tvw", "natural"][0], bins=40)

# %%
utilisation_figure(real["tvw", "longest-first"][0], bins=40)

# %% [markdown]
# ### Exercise 3.1
#
# Store in `tvw_gain` the time of tvw under `natural` over its time under
# `longest-first` (a number above 1 means longest-first is faster), and in
# `tvw_vs_tw` tvw's best time (over the three policies) over tw's best time.

# %% tags=["exercise"]
tvw_gain = None
tvw_vs_tw = None

# %% tags=["solution"]
tvw_gain = real["tvw", "natural"][0].kernel_us / real["tvw", "longest-first"][0].kernel_us


def best(pattern):
    return min(real[pattern, p][0].kernel_us for p in ("natural", "longest-first", "split"))


tvw_vs_tw = best("tvw") / best("tw")

# %%
natural = real["tvw", "natural"][0].kernel_us
assert abs(tvw_gain - natural / real["tvw", "longest-first"][0].kernel_us) < 1e-9
assert tvw_gain > 1.05, "longest-first recovers part of tvw's tail here"
assert 0 < tvw_vs_tw < 1.2
print(f"longest-first: {tvw_gain:.2f}x faster for tvw; tvw's best / tw's best = {tvw_vs_tw:.2f}")

# %% [markdown]
# ## What you saw
#
# - A trained weight's tiles keep unequal K: in MiniLM's FFN1 the heaviest tile keeps
#   10-25% more than the mean, in the worst layer about 1.7x.
# - In a launch that fits on the GPU in about one wave, the heaviest CTAs set the time;
#   dispatched last they run alone - the tail in the timeline and the cold band in the
#   utilisation picture.
# - **Longest-first** only reorders the same CTAs; it pays when heavy CTAs would
#   otherwise start late, and costs nothing. **Split** cuts the heavy tiles so their
#   pieces run at once, but adds a reduction: it wins on the toy's strong skew; on the
#   real, mild skew the reduction eats part of its gain (tvw: 5.3x against
#   longest-first's 5.9x).
# - On the real structure tvw does the same tensor work as tw at twice the rate but
#   gathers more rows per useful MAC; whether it wins depends on the GPU and on
#   balance (docs/validation.md: on the H200 our tvw ran 1.66x *slower* than tw).
#
# **Going further.** `tvwsim model bert-base --hw a100 --batch 8 --pattern tw,tvw
# --policy longest-first` runs the whole model; compare `--policy natural`.
