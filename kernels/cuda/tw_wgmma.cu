// tw_wgmma.cu - tile-wise sparsity for Hopper (sm_90a): the gather of tw.cu on the
// warpgroup-MMA main loop of wgmma.cuh.
//
// Buffers as tw.cu, except `values`: the tiles' compact G x Kt blocks stored K-blocked
// and pre-swizzled (kernels/wgmma.py `weight_image`): stage s of tile t is block
// k_ptr[t] / BK + s, one bulk copy. The activation rows are gathered through the tile's
// kept-K list by every thread's cp.async: a list of rows is no box a TMA tensor map
// describes (docs/kernels.md, "Hopper kernels").

#include "wgmma.cuh"

TVWSIM_CHECK_SMEM(false);

extern "C" __global__ void __launch_bounds__(tvw::kThreads, 1)
    tw_gemm(const int4* __restrict__ tasks, const __half* __restrict__ values,
            const int* __restrict__ row_map, const int* __restrict__ k_ptr,
            const int* __restrict__ k_index, const __half* __restrict__ xt, int m8,
            __half* __restrict__ yt, float* __restrict__ ws) {
    extern __shared__ __align__(1024) char smem[];
    __shared__ __align__(8) uint64_t landed[STAGES];
    const int4 task = tasks[blockIdx.x];
    const int tile = task.x, block = task.y, k_begin = task.z, k_end = task.w;
    const int kp = k_ptr[tile];
    const int kt = k_ptr[tile + 1] - kp;

    tvw::wg::GatherLoader<false> loader{tvw::wg::task_weight<false>(values, kp / BK, k_begin),
                                        k_index + kp, xt, m8, block * BN, k_begin, {}};
    float acc[BN / 2];
    tvw::wg::mainloop<false>(loader, (k_end - k_begin) / BK, smem, landed, acc);

    const bool split = !(k_begin == 0 && k_end == kt);
    const int* tile_rows = row_map + static_cast<int64_t>(tile) * BM;
    auto row_of = [&](int r) { return __ldg(tile_rows + r); };
    tvw::wg::epilogue(acc, smem, row_of, split, block * BN, m8, yt, ws);
}

TVWSIM_DEFINE_FINALIZE_KERNEL()
