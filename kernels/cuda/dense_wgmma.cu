// dense_wgmma.cu - the dense baseline for Hopper (sm_90a): YT = W @ XT on warpgroup MMA.
//
// The same task, buffers and epilogue as dense.cu, with one difference in what the
// launcher hands over for the weight: `w_blocked` is the weight stored K-blocked and
// pre-swizzled (kernels/wgmma.py `blocked_weight`): for tile t and stage s, the BM x 64
// block the stage needs, laid out exactly as shared memory wants it (128-byte swizzle), at
// w_blocked + (t * ldw / BK + s) * BM * BK. A stage's weight is then one contiguous block
// and moves in one bulk copy (cp.async.bulk, the copy engine TMA uses) with no tensor map
// and no per-thread address work. The activation tile is copied by every thread with
// cp.async into the N-major swizzled layout, as the sm_80 kernels do.
//
// Pipeline (STAGES buffers, all warpgroups load and compute; see docs/kernels.md):
//   prologue  issue stages 0 .. STAGES-3
//   iter it   wait until stage it landed (cp.async group + the weight's mbarrier phase),
//             fence the cp.async writes into the async proxy, __syncthreads;
//             issue stage it + STAGES - 2 into the buffer stage it - 2 used (every
//             warpgroup finished reading it: wgmma.wait_group 1 at the end of it - 1);
//             BK / 16 wgmma on stage it, commit, wait until at most this batch runs.
// So while the tensor core runs stage it, stage it - 1's batch may still be finishing
// and the copies of the next STAGES - 2 stages are in flight.

#include "wgmma.cuh"

TVWSIM_CHECK_SMEM(false);

namespace {

using L = tvw::wg::Layout;
static_assert(STAGES >= 3, "one buffer computing, one finishing, at least one loading");

}  // namespace

extern "C" __global__ void __launch_bounds__(tvw::kThreads, 1)
    dense_gemm(const int4* __restrict__ tasks, const __half* __restrict__ w_blocked, int n,
               int ldw, const __half* __restrict__ xt, int K, int m8, __half* __restrict__ yt,
               float* __restrict__ ws) {
    // 1 KiB alignment: every operand of every stage starts on a swizzle atom, so the
    // descriptors' base offset is 0.
    extern __shared__ __align__(1024) char smem[];
    __shared__ __align__(8) uint64_t weight_landed[STAGES];
    const int4 task = tasks[blockIdx.x];
    const int tile = task.x, block = task.y, k_begin = task.z, k_end = task.w;
    const int k_steps = (k_end - k_begin) / BK;
    const int tok0 = block * BN;

    if (threadIdx.x == 0) {
#pragma unroll
        for (int s = 0; s < STAGES; ++s) tvw::wg::mbarrier_init(&weight_landed[s], 1);
        tvw::wg::mbarrier_init_fence();
    }
    __syncthreads();

    const __half* w_tile =
        w_blocked + (static_cast<int64_t>(tile) * (ldw / BK) + k_begin / BK) * (BM * BK);
    auto issue = [&](int step) {
        const int buf = step % STAGES;
        char* stage = smem + buf * L::kStageBytes;
        if (threadIdx.x == 0) {
            tvw::wg::mbarrier_expect_bytes(&weight_landed[buf], L::kABytes);
            tvw::wg::bulk_copy(stage, w_tile + static_cast<int64_t>(step) * (BM * BK),
                               L::kABytes, &weight_landed[buf]);
        }
        const int k0 = k_begin + step * BK;
        int xt_row[tvw::BPlan::kIters];
#pragma unroll
        for (int i = 0; i < tvw::BPlan::kIters; ++i) {
            const int k = k0 + tvw::BPlan::row(i);
            xt_row[i] = k < K ? k : -1;  // k_pad > K: the padded K rows read as zeros
        }
        tvw::wg::issue_activation_rows(tvw::smem_addr(stage + L::kABytes), xt, m8, tok0,
                                       xt_row);
    };

#pragma unroll
    for (int s = 0; s < STAGES - 2; ++s) {
        if (s < k_steps) issue(s);
        tvw::cp_async_commit();
    }

    // No zeroing: the first K step runs with scale-d = 0. Registers that a non-wgmma
    // instruction writes inside the loop would make ptxas serialise the wgmma pipeline.
    float acc[BN / 2];
    const int warpgroup = threadIdx.x / 128;

    for (int it = 0; it < k_steps; ++it) {
        const int buf = it % STAGES;
        tvw::cp_async_wait<STAGES - 3>();
        tvw::wg::fence_proxy_async();
        tvw::wg::mbarrier_wait(&weight_landed[buf], (it / STAGES) & 1);
        __syncthreads();
        if (it + STAGES - 2 < k_steps) issue(it + STAGES - 2);
        tvw::cp_async_commit();

        const uint32_t a = tvw::smem_addr(smem + buf * L::kStageBytes) +
                           warpgroup * 64 * tvw::wg::kSwizzleRowBytes;
        const uint32_t b = tvw::smem_addr(smem + buf * L::kStageBytes + L::kABytes);
        tvw::wg::fence();
#pragma unroll
        for (int ks = 0; ks < BK / 16; ++ks) {
            // K step ks: 32 bytes further along A's swizzled rows (the tensor core applies
            // the swizzle to the address it computes), two 8-row atoms further down B.
            tvw::wg::Wgmma<BN>::dense(acc, tvw::wg::descriptor(a + 32 * ks, 16, L::kASbo),
                                      tvw::wg::descriptor(b + ks * 2 * tvw::wg::kAtomBytes,
                                                          L::kBLbo, L::kBSbo),
                                      it > 0 || ks > 0);
        }
        tvw::wg::commit();
        tvw::wg::wait<1>();
    }
    tvw::wg::wait<0>();
    if (k_steps == 0) {  // (no shipped schedule makes such a task; stay defined anyway)
#pragma unroll
        for (int v = 0; v < BN / 2; ++v) acc[v] = 0.0f;
    }
    tvw::cp_async_wait<0>();
    __syncthreads();  // the epilogue reuses the pipeline's buffers

    const bool split = !(k_begin == 0 && k_end == ldw);
    const int row0 = tile * BM;
    auto row_of = [&](int r) { return row0 + r < n ? row0 + r : -1; };
    tvw::wg::epilogue(acc, smem, row_of, split, tok0, m8, yt, ws);
}

TVWSIM_DEFINE_FINALIZE_KERNEL()
