// vw_wgmma.cu - 2:4 sparsity for Hopper (sm_90a): wgmma.sp on the main loop of wgmma.cuh.
//
// Buffers as vw.cu, except `values`: the compressed values and their lane-ordered
// metadata stored K-blocked (kernels/wgmma.py `weight_image`): stage s of row tile t is
// block t * k_pad / BK + s, BM x 32 compressed fp16 (64-byte swizzle) followed by the
// BM / 16 x 32 metadata words of those rows and K, one bulk copy; `meta` is not read.
// Rows past n_pad are zero values with legal metadata words, so every wgmma.sp is defined.

#define TVWSIM_SPARSE_KERNEL 1
#include "wgmma.cuh"

TVWSIM_CHECK_SMEM(true);

extern "C" __global__ void __launch_bounds__(tvw::kThreads, 1)
    vw_gemm(const int4* __restrict__ tasks, const __half* __restrict__ values,
            const uint32_t* __restrict__ meta, int n, int n_pad, int k_pad,
            const __half* __restrict__ xt, int K, int m8, __half* __restrict__ yt,
            float* __restrict__ ws) {
    extern __shared__ __align__(1024) char smem[];
    __shared__ __align__(8) uint64_t landed[STAGES];
    const int4 task = tasks[blockIdx.x];
    const int tile = task.x, block = task.y, k_begin = task.z, k_end = task.w;

    tvw::wg::PlainLoader<true> loader{
        tvw::wg::task_weight<true>(values, static_cast<int64_t>(tile) * (k_pad / BK), k_begin),
        xt, K, m8, block * BN, k_begin, {}};
    float acc[BN / 2];
    tvw::wg::mainloop<true>(loader, (k_end - k_begin) / BK, smem, landed, acc);

    const bool split = !(k_begin == 0 && k_end == k_pad);
    const int row0 = tile * BM;
    auto row_of = [&](int r) { return row0 + r < n ? row0 + r : -1; };
    tvw::wg::epilogue(acc, smem, row_of, split, block * BN, m8, yt, ws);
}

TVWSIM_DEFINE_FINALIZE_KERNEL()
