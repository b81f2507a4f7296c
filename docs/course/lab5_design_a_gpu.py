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
# # Lab 5 - Design a GPU for sparse DNNs
#
# You are the architect. The A100 spends silicon on a 2:4 sparse tensor core that runs
# `mma.sp` at twice the dense rate. Would a 4x core pay? Is the sparse core worth
# anything if the L2 cannot feed it? And which sparsity pattern should the model
# designers prune with on each candidate GPU? A **design-space exploration** answers
# by simulating every combination: here 3 sparse-core ratios x 4 L2 bandwidths = 12
# hypothetical GPUs, each running BERT-base's FFN1 dense and in three sparse patterns.
#
# This is what `tvwsim explore` does at scale (docs/explore.md: Dask workers, a
# resumable Parquet store, a report with pictures). Here the same machinery runs in this
# process, on a spec small enough to take a few seconds.
#
# **Learning goals.** After this lab you can
#
# 1. write an exploration spec (which fields vary, which workloads, which patterns);
# 2. read a speedup heatmap, a sensitivity (tornado) chart and a fastest-pattern map;
# 3. find the pattern that wins on each hypothetical GPU, and explain the boundary
#    between them by the bottleneck;
# 4. argue a hardware decision (is a 4x sparse core worth it?) from the data.
#
# **Time:** about 50 minutes. Background: docs/explore.md, lab 3 (sparse tensor cores),
# lab 2 (what bandwidth does).

# %%
# %matplotlib inline
import tempfile

from tvwsim.explore import report
from tvwsim.explore.runner import run_exploration
from tvwsim.explore.spec import parse_spec
from tvwsim.explore.store import Store, read_rows

import tvwsim

a100 = tvwsim.load_preset("a100")
print(f"a100: sparse_tflop_ratio {a100.sparse_tflop_ratio}, L2 {a100.l2_bandwidth_gbps} GB/s")

# %% [markdown]
# ## 1. The spec
#
# A spec is a TOML file (`tvwsim explore my-space.toml --store DIR`); here it is the
# same content as a Python dict. Every grid value is checked against the base preset
# before anything runs.

# %%
SPEC = {
    "name": "lab5-sparse-core",
    "description": "sparse-core ratio x L2 bandwidth on BERT-base FFN1 at batch 32",
    "base": "a100",
    "patterns": ["dense", "vw", "tw", "tvw"],
    "sparsities": [0.75],
    "hardware": {
        "sparse_tflop_ratio": [0, 2, 4],
        "l2_bandwidth_gbps": {"factors": [0.25, 0.5, 1, 2]},
    },
    "workload": [{"name": "ffn1", "shape": [4096, 3072, 768]}],
}
spec = parse_spec(SPEC, label="lab5")
print(f"{len(spec.points)} hardware points, varied: {', '.join(spec.varied)}")

# %% [markdown]
# ### Exercise 1.1
#
# One row is stored per (hardware point, workload, pattern, sparsity). dense runs at 0,
# vw at its fixed 0.5, tw and tvw at each target sparsity. How many rows will this
# exploration write? Store the number in `expected_rows`.

# %% tags=["exercise"]
expected_rows = None

# %% tags=["solution"]
expected_rows = 3 * 4 * (1 + 1 + 1 + 1)

# %%
assert expected_rows == len(spec.points) * spec.rows_per_point
print(f"{expected_rows} rows expected")

# %% [markdown]
# **Predict first.** Before you run it: at a quarter of the A100's L2 bandwidth, which
# pattern will be fastest, and will the sparse-core ratio change anything there? With
# twice the L2 bandwidth and a 4x sparse core?

# %% tags=["experiment"]
store_dir = tempfile.mkdtemp(prefix="lab5-")
summary = run_exploration(spec, Store(store_dir, spec), workers=0)
print(f"{summary.rows} rows in {summary.seconds:.1f} s")
rows = read_rows(store_dir)
workload = rows["workload"].iloc[0]
chosen = report.choose(rows, workload, 0.75)
columns = ["sparse_tflop_ratio", "l2_bandwidth_gbps", "pattern", "time_us", "speedup", "bottleneck"]
chosen[columns].sort_values(["l2_bandwidth_gbps", "sparse_tflop_ratio", "pattern"])

# %% [markdown]
# ## 2. Pictures
#
# The heatmaps show each pattern's speedup over dense on the same hypothetical GPU,
# over the two varied fields.

# %%
report.heatmap_figure(chosen, "sparse_tflop_ratio", "l2_bandwidth_gbps", f"{workload}: speedup")

# %% [markdown]
# The tornado chart: for each pattern, how far each field moves its mean speedup (a
# marker alone is a field the pattern does not care about).

# %%
report.tornado_figure(
    report.sensitivity(chosen, spec.varied), f"{workload}: what moves each pattern"
)

# %% [markdown]
# And the decision map: on each hypothetical GPU, the fastest pattern.

# %%
fastest = report.fastest_table(chosen, "sparse_tflop_ratio", "l2_bandwidth_gbps")
report.fastest_figure(fastest, "sparse_tflop_ratio", "l2_bandwidth_gbps", "fastest pattern")

# %% [markdown]
# ### Exercise 2.1
#
# Write `fastest_pattern(chosen, ratio, l2)`: the pattern with the highest speedup on
# the point with that `sparse_tflop_ratio` and `l2_bandwidth_gbps` (columns of
# `chosen`), using pandas or plain Python. It must agree with the map for every cell.


# %% tags=["exercise"]
def fastest_pattern(chosen, ratio, l2):
    """Name of the fastest pattern at one hardware point. Replace the body."""
    return None


# %% tags=["solution"]
def fastest_pattern(chosen, ratio, l2):
    at = chosen[(chosen["sparse_tflop_ratio"] == ratio) & (chosen["l2_bandwidth_gbps"] == l2)]
    return at.sort_values("speedup", ascending=False, kind="stable")["pattern"].iloc[0]


# %%
for l2 in fastest.index:
    for ratio in fastest.columns:
        assert fastest_pattern(chosen, ratio, l2) == fastest.loc[l2, ratio], (ratio, l2)
print("fastest_pattern agrees with the map on all", fastest.size, "points")

# %% [markdown]
# ## 3. The architect's decision
#
# **Predict first.** On the A100 itself (ratio 2, L2 5400 GB/s), what does going to a 4x
# sparse core buy tvw - and what does doubling the L2 bandwidth buy it instead?


# %% tags=["experiment"]
def speedup(pattern, ratio, l2):
    at = chosen[
        (chosen["pattern"] == pattern)
        & (chosen["sparse_tflop_ratio"] == ratio)
        & (chosen["l2_bandwidth_gbps"] == l2)
    ]
    return float(at["speedup"].iloc[0])


for label, (ratio, l2) in {
    "a100": (2, 5400),
    "4x sparse core": (4, 5400),
    "2x L2 bandwidth": (2, 10800),
    "both": (4, 10800),
}.items():
    print(
        f"{label:16s} tvw {speedup('tvw', ratio, l2):.2f}x  vw {speedup('vw', ratio, l2):.2f}x"
        f"  tw {speedup('tw', ratio, l2):.2f}x"
    )

# %% [markdown]
# ### Exercise 3.1
#
# Find the hypothetical GPUs of this design on which tvw is faster than tw. Store them
# as a set of `(sparse_tflop_ratio, l2_bandwidth_gbps)` pairs in `tvw_beats_tw`.

# %% tags=["exercise"]
tvw_beats_tw = None

# %% tags=["solution"]
tvw_beats_tw = {
    (r, l2)
    for r in (0, 2, 4)
    for l2 in sorted(set(chosen["l2_bandwidth_gbps"]))
    if speedup("tvw", r, l2) > speedup("tw", r, l2)
}

# %%
expected = {
    (r, l2)
    for r, l2 in zip(chosen["sparse_tflop_ratio"], chosen["l2_bandwidth_gbps"], strict=True)
    if speedup("tvw", r, l2) > speedup("tw", r, l2)
}
assert tvw_beats_tw == expected
assert all(r == 4 for r, _ in tvw_beats_tw), "only with a 4x sparse core"
print("tvw beats tw on:", sorted(tvw_beats_tw))

# %% [markdown]
# ## What you saw
#
# - When the L2 is slow (a quarter or half of the A100's), every pattern is
#   bandwidth-bound and the sparse-core ratio changes nothing: tw wins by moving the
#   fewest bytes (75% of the weight and of the gathered activations are never read).
# - Without a sparse core (ratio 0) vw gains nothing, tvw only its tile-wise part.
# - A faster sparse core pays only with a faster L2: alone, the 4x core moves tvw from
#   2.67x to 2.71x; with twice the L2 bandwidth as well it reaches about 3.1x and just
#   overtakes tw. The balance between compute and feed decides, not either alone.
# - For this GEMM, a designer without a larger L2 budget should leave the sparse core at
#   2x and tell model designers to prune tile-wise.
#
# **Going further.** `tvwsim explore sparse-tc --store runs/sparse-tc` runs the shipped
# spec (27 points, all of BERT-base, about a minute and a half on two workers), then
# `tvwsim explore report runs/sparse-tc`. Add `sm_count` to the spec above: does a
# smaller GPU favour sparse patterns more or less?
