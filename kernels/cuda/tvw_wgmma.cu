// tvw_wgmma.cu - tile-vector-wise sparsity for Hopper (sm_90a): the gather of tw_wgmma.cu
// with the wgmma.sp main loop of vw_wgmma.cu.
//
// Buffers as tvw.cu, except `values`: each tile's compressed G x Kt/2 values and their
// metadata stored K-blocked (kernels/wgmma.py `weight_image`): stage s of tile t is block
// k_ptr[t] / BK + s (compressed rows, then metadata words), one bulk copy; `meta` is not
// read. The 2:4 groups are groups of four gathered stage rows, as in tvw.cu.

#define TVWSIM_SPARSE_KERNEL 1
#include "wgmma.cuh"

TVWSIM_CHECK_SMEM(true);

extern "C" __global__ void __launch_bounds__(tvw::wg::kCtaThreads, 1)
    tvw_gemm(const int4* __restrict__ tasks, const __half* __restrict__ values,
             const uint32_t* __restrict__ meta, const int* __restrict__ row_map,
             const int* __restrict__ k_ptr, const int* __restrict__ k_index,
             const __half* __restrict__ xt, int m8, __half* __restrict__ yt,
             float* __restrict__ ws) {
    extern __shared__ __align__(1024) char smem[];
    __shared__ __align__(8) uint64_t bars[2 * STAGES];
    tvw::wg::gather_task<true>(tasks, values, row_map, k_ptr, k_index, xt, m8, yt, ws, smem,
                               bars);
}

TVWSIM_DEFINE_FINALIZE_KERNEL()
