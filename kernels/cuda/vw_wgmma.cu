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

extern "C" __global__ void __launch_bounds__(tvw::wg::kCtaThreads, 1)
    vw_gemm(const int4* __restrict__ tasks, const __half* __restrict__ values,
            const uint32_t* __restrict__ meta, int n, int n_pad, int k_pad,
            const __half* __restrict__ xt, int K, int m8, __half* __restrict__ yt,
            float* __restrict__ ws) {
    extern __shared__ __align__(1024) char smem[];
    __shared__ __align__(8) uint64_t bars[2 * STAGES];
    tvw::wg::plain_task<true>(tasks, values, n, k_pad, xt, K, m8, yt, ws, smem, bars);
}

TVWSIM_DEFINE_FINALIZE_KERNEL()
