// tw_wgmma.cu - tile-wise sparsity for Hopper (sm_90a): the gather of tw.cu on the
// warpgroup-MMA main loop of wgmma.cuh.
//
// Buffers as tw.cu, except `values`: the tiles' compact G x Kt blocks stored K-blocked
// and pre-swizzled (kernels/wgmma.py `weight_image`): stage s of tile t is block
// k_ptr[t] / BK + s, one bulk copy. The activation rows are gathered through the tile's
// kept-K list by every thread's cp.async: a list of rows is no box a TMA tensor map
// describes (docs/kernels.md, section 12).

#include "wgmma.cuh"

TVWSIM_CHECK_SMEM(false);

extern "C" __global__ void __launch_bounds__(tvw::wg::kCtaThreads, 1)
    tw_gemm(const int4* __restrict__ tasks, const __half* __restrict__ values,
            const int* __restrict__ row_map, const int* __restrict__ k_ptr,
            const int* __restrict__ k_index, const __half* __restrict__ xt, int m8,
            __half* __restrict__ yt, float* __restrict__ ws) {
    extern __shared__ __align__(1024) char smem[];
    __shared__ __align__(8) uint64_t bars[2 * STAGES];
    tvw::wg::gather_task<false>(tasks, values, row_map, k_ptr, k_index, xt, m8, yt, ws, smem,
                                bars);
}

TVWSIM_DEFINE_FINALIZE_KERNEL()
