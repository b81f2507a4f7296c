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

extern "C" __global__ void __launch_bounds__(tvw::kThreads, 1)
    tvw_gemm(const int4* __restrict__ tasks, const __half* __restrict__ values,
             const uint32_t* __restrict__ meta, const int* __restrict__ row_map,
             const int* __restrict__ k_ptr, const int* __restrict__ k_index,
             const __half* __restrict__ xt, int m8, __half* __restrict__ yt,
             float* __restrict__ ws) {
    extern __shared__ __align__(1024) char smem[];
    __shared__ __align__(8) uint64_t landed[STAGES];
    const int4 task = tasks[blockIdx.x];
    const int tile = task.x, block = task.y, k_begin = task.z, k_end = task.w;
    const int kp = k_ptr[tile];
    const int kt = k_ptr[tile + 1] - kp;

    tvw::wg::GatherLoader<true> loader{tvw::wg::task_weight<true>(values, kp / BK, k_begin),
                                       k_index + kp, xt, m8, block * BN, k_begin, {}};
    float acc[BN / 2];
    tvw::wg::mainloop<true>(loader, (k_end - k_begin) / BK, smem, landed, acc);

    const bool split = !(k_begin == 0 && k_end == kt);
    const int* tile_rows = row_map + static_cast<int64_t>(tile) * BM;
    auto row_of = [&](int r) { return __ldg(tile_rows + r); };
    tvw::wg::epilogue(acc, smem, row_of, split, block * BN, m8, yt, ws);
}

TVWSIM_DEFINE_FINALIZE_KERNEL()
