// tw.cu - tile-wise sparsity: every weight tile of G = BM rows keeps its own list of K.
//
// Buffers (docs/formats.md, "tw"):
//   values  fp16  [G * k_ptr[-1]]  tile t's compact G x Kt block (Kt = k_ptr[t+1] - k_ptr[t],
//                                  a multiple of BK), row-major, at G * k_ptr[t]
//   k_ptr   int32 [tiles + 1]      offsets into k_index
//   k_index int32 [k_ptr[-1]]      tile t's kept K (original input features), ascending,
//                                  then -1 padding up to Kt
//   row_map int32 [tiles * G]      output feature of each tile row, -1 = not stored
//   xt, yt, ws, tasks as in dense.cu; k_begin, k_end are compacted positions 0 .. Kt
//
// The main loop is the dense one. What differs is where the activation rows of a stage
// come from: stage row kk is XT row k_index[k_ptr[t] + k0 + kk] - a gather, done at copy
// time by giving each 16-byte cp.async its own source row (a K-major XT makes one kept K
// one contiguous row). A -1 entry becomes a zero-filled copy (src_size 0) that costs no
// memory traffic. The indices of the next stage are read into registers one iteration
// ahead (prefetch), so that dependent load does not stall the copies. The epilogue
// scatters the tile's rows to their original output features through row_map.

#include "common.cuh"

TVWSIM_CHECK_SMEM(false);

namespace {

using L = tvw::StageLayout<false>;

struct TwLoader {
    const __half* tile_values;  // this tile's G x Kt block
    int kt;
    const int* tile_k_index;  // this tile's kept-K list (length kt)
    const __half* xt;
    int m8, tok0, k_begin;
    int next_row[tvw::BPlan::kIters];  // XT rows of the stage to be issued next

    __device__ __forceinline__ void prefetch(int step) {
        const int k0 = k_begin + step * BK;
#pragma unroll
        for (int i = 0; i < tvw::BPlan::kIters; ++i)
            next_row[i] = tvw::BPlan::active(i) ? __ldg(tile_k_index + k0 + tvw::BPlan::row(i)) : -1;
    }

    __device__ __forceinline__ void issue(int step, char* stage) {
        const int k0 = k_begin + step * BK;
        tvw::issue_plain_rows<BM, L::kAChunks>(tvw::smem_addr(stage), tile_values, kt, 0, BM, k0);
        tvw::issue_activation_rows(tvw::smem_addr(stage + L::kABytes), xt, m8, tok0, next_row);
    }
};

}  // namespace

extern "C" __global__ void __launch_bounds__(tvw::kThreads)
    tw_gemm(const int4* __restrict__ tasks, const __half* __restrict__ values,
            const int* __restrict__ row_map, const int* __restrict__ k_ptr,
            const int* __restrict__ k_index, const __half* __restrict__ xt, int m8,
            __half* __restrict__ yt, float* __restrict__ ws) {
    extern __shared__ __align__(128) char smem[];
    const int4 task = tasks[blockIdx.x];
    const int tile = task.x, block = task.y, k_begin = task.z, k_end = task.w;
    const int kp = k_ptr[tile];
    const int kt = k_ptr[tile + 1] - kp;

    TwLoader loader{values + static_cast<int64_t>(BM) * kp, kt, k_index + kp, xt, m8,
                    block * BN, k_begin, {}};
    float acc[tvw::kMT][tvw::kNT][4];
    tvw::zero(acc);
    tvw::pipeline<false>(loader, (k_end - k_begin) / BK, smem,
                         [&](const char* stage) { tvw::warp_stage_dense(stage, acc); });

    const bool split = !(k_begin == 0 && k_end == kt);
    const int* tile_rows = row_map + static_cast<int64_t>(tile) * BM;
    auto row_of = [&](int r) { return __ldg(tile_rows + r); };
    tvw::epilogue<false>(acc, smem, row_of, split, block * BN, m8, yt, ws);
}

TVWSIM_DEFINE_FINALIZE_KERNEL()
