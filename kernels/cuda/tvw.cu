// tvw.cu - tile-vector-wise sparsity: the gather of tw.cu with the sparse main loop of
// vw.cu. Each tile keeps its own K list (global-memory savings: fewer activation rows
// and weight columns move) and is 2:4 along its compacted K (register-level savings:
// the sparse tensor core skips half of what was moved).
//
// Buffers (docs/formats.md, "tvw"):
//   values  fp16   [G * k_ptr[-1] / 2]   tile t's compressed G x Kt/2 block at G * k_ptr[t] / 2
//   meta    uint32 lane-ordered          tile t's [G / 16, Kt / 64, 32] words at G * k_ptr[t] / 32
//   k_ptr, k_index, row_map              as tw (every Kt a multiple of BK, itself of 64)
//   xt, yt, ws, tasks as in dense.cu; k_begin, k_end are compacted logical positions.
//
// The 2:4 groups are aligned groups of 4 *compacted* positions, so the tensor core's
// choice of 2 out of 4 gathered stage rows needs nothing new: the gather fills stage rows
// in compacted order, exactly as the encoder compressed them.

#define TVWSIM_SPARSE_KERNEL 1  // compile the mma.sp helpers of common.cuh
#include "common.cuh"

TVWSIM_CHECK_SMEM(true);

namespace {

using L = tvw::StageLayout<true>;

struct TvwLoader {
    const __half* tile_values;  // this tile's compressed G x Kt/2 block
    const uint32_t* tile_meta;  // this tile's [G/16, Kt/64, 32] metadata words
    int kt;
    const int* tile_k_index;
    const __half* xt;
    int m8, tok0, k_begin;
    int next_row[tvw::BPlan::kIters];

    __device__ __forceinline__ void prefetch(int step) {
        const int k0 = k_begin + step * BK;
#pragma unroll
        for (int i = 0; i < tvw::BPlan::kIters; ++i)
            next_row[i] = tvw::BPlan::active(i) ? __ldg(tile_k_index + k0 + tvw::BPlan::row(i)) : -1;
    }

    __device__ __forceinline__ void issue(int step, char* stage) {
        const int k0 = k_begin + step * BK;
        tvw::issue_plain_rows<BM, L::kAChunks>(tvw::smem_addr(stage), tile_values, kt / 2, 0,
                                               BM, k0 / 2);
        tvw::issue_metadata(tvw::smem_addr(stage + L::kABytes), tile_meta, 0, BM / 16, kt / 64,
                            k0 / 64);
        tvw::issue_activation_rows(tvw::smem_addr(stage + L::kABytes + L::kEBytes), xt, m8,
                                   tok0, next_row);
    }
};

}  // namespace

extern "C" __global__ void __launch_bounds__(tvw::kThreads)
    tvw_gemm(const int4* __restrict__ tasks, const __half* __restrict__ values,
             const uint32_t* __restrict__ meta, const int* __restrict__ row_map,
             const int* __restrict__ k_ptr, const int* __restrict__ k_index,
             const __half* __restrict__ xt, int m8, __half* __restrict__ yt,
             float* __restrict__ ws) {
    extern __shared__ __align__(128) char smem[];
    const int4 task = tasks[blockIdx.x];
    const int tile = task.x, block = task.y, k_begin = task.z, k_end = task.w;
    const int kp = k_ptr[tile];
    const int kt = k_ptr[tile + 1] - kp;

    TvwLoader loader{values + static_cast<int64_t>(BM) * kp / 2,
                     meta + static_cast<int64_t>(BM) * kp / 32,
                     kt,
                     k_index + kp,
                     xt,
                     m8,
                     block * BN,
                     k_begin,
                     {}};
    float acc[tvw::kMT][tvw::kNT][4];
    tvw::zero(acc);
    tvw::pipeline<true>(loader, (k_end - k_begin) / BK, smem,
                        [&](const char* stage) { tvw::warp_stage_sparse(stage, acc); });

    const bool split = !(k_begin == 0 && k_end == kt);
    const int* tile_rows = row_map + static_cast<int64_t>(tile) * BM;
    auto row_of = [&](int r) { return __ldg(tile_rows + r); };
    tvw::epilogue<true>(acc, smem, row_of, split, block * BN, m8, yt, ws);
}

TVWSIM_DEFINE_FINALIZE_KERNEL()
