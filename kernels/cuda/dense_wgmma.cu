// dense_wgmma.cu - the dense baseline for Hopper (sm_90a): YT = W @ XT on warpgroup MMA.
//
// The task, activations, output and epilogue of dense.cu on the main loop of wgmma.cuh.
// What differs is the weight buffer: `w_blocked` is the weight stored K-blocked and
// pre-swizzled (kernels/wgmma.py `weight_image`): for row tile t and stage s, the BM x 64
// block a stage needs, laid out exactly as shared memory wants it, is block
// t * ldw / BK + s. A stage's weight is one contiguous block and moves in one bulk copy
// (cp.async.bulk, the copy engine of TMA) with no tensor map and no per-thread address
// work; the activation rows are copied by every thread with cp.async.

#include "wgmma.cuh"

TVWSIM_CHECK_SMEM(false);

extern "C" __global__ void __launch_bounds__(tvw::wg::kCtaThreads, 1)
    dense_gemm(const int4* __restrict__ tasks, const __half* __restrict__ w_blocked, int n,
               int ldw, const __half* __restrict__ xt, int K, int m8, __half* __restrict__ yt,
               float* __restrict__ ws) {
    // 1 KiB alignment: every swizzle atom of every stage is aligned, so the descriptors'
    // base offset is 0.
    extern __shared__ __align__(1024) char smem[];
    __shared__ __align__(8) uint64_t bars[2 * STAGES];
    tvw::wg::plain_task<false>(tasks, w_blocked, n, ldw, xt, K, m8, yt, ws, smem, bars);
}

TVWSIM_DEFINE_FINALIZE_KERNEL()
