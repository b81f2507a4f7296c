// dense_wgmma.cu - the dense baseline for Hopper (sm_90a): YT = W @ XT on warpgroup MMA.
//
// The task, activations, output and epilogue of dense.cu; the main loop of wgmma.cuh.
// What differs is the weight buffer: `w_blocked` is the weight stored K-blocked and
// pre-swizzled (kernels/wgmma.py `weight_image`): for row tile t and stage s, the BM x 64
// block a stage needs, laid out exactly as shared memory wants it, is block
// t * ldw / BK + s. A stage's weight is one contiguous block and moves in one bulk copy
// (cp.async.bulk, the copy engine of TMA) with no tensor map and no per-thread address
// work; the activation rows are copied by every thread with cp.async.

#include "wgmma.cuh"

TVWSIM_CHECK_SMEM(false);

extern "C" __global__ void __launch_bounds__(tvw::kThreads, 1)
    dense_gemm(const int4* __restrict__ tasks, const __half* __restrict__ w_blocked, int n,
               int ldw, const __half* __restrict__ xt, int K, int m8, __half* __restrict__ yt,
               float* __restrict__ ws) {
    // 1 KiB alignment: every swizzle atom of every stage is aligned, so the descriptors'
    // base offset is 0.
    extern __shared__ __align__(1024) char smem[];
    __shared__ __align__(8) uint64_t landed[STAGES];
    const int4 task = tasks[blockIdx.x];
    const int tile = task.x, block = task.y, k_begin = task.z, k_end = task.w;

    tvw::wg::PlainLoader<false> loader{
        tvw::wg::task_weight<false>(w_blocked, static_cast<int64_t>(tile) * (ldw / BK), k_begin),
        xt, K, m8, block * BN, k_begin, {}};
    float acc[BN / 2];
    tvw::wg::mainloop<false>(loader, (k_end - k_begin) / BK, smem, landed, acc);

    const bool split = !(k_begin == 0 && k_end == ldw);
    const int row0 = tile * BM;
    auto row_of = [&](int r) { return row0 + r < n ? row0 + r : -1; };
    tvw::wg::epilogue(acc, smem, row_of, split, block * BN, m8, yt, ws);
}

TVWSIM_DEFINE_FINALIZE_KERNEL()
