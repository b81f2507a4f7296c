// dense.cu - the dense baseline: YT = W @ XT on mma.sync m16n8k16.
//
// Buffers (docs/formats.md, "dense"):
//   w     fp16 [n, ldw]       the weight, rows = output features, ldw = k_pad (a multiple
//                             of BK, zero columns past k)
//   xt    fp16 [K, m8]        activations, K-major (row k = all tokens of input feature k);
//                             the launcher pads the token count M to m8 = roundup(M, 8)
//                             so every 16-byte copy is whole
//   yt    fp16 [n, m8]        output, row = output feature
//   ws    fp32 [n, m8]        split-K workspace (zeroed by the launcher; used only by
//                             tasks that cover part of K)
//   tasks int32 [n_tasks, 4]  (weight_tile, act_block, k_begin, k_end); CTA i runs task i
//
// A stage is BM rows x BK columns of W and BK rows x BN tokens of XT, both plain
// rectangles: the simplest loader, and the yardstick the sparse kernels are judged by.

#include "common.cuh"

TVWSIM_CHECK_SMEM(false);

namespace {

using L = tvw::StageLayout<false>;

struct DenseLoader {
    const __half* w;
    int n, ldw;
    const __half* xt;
    int K, m8;
    int row0, tok0, k_begin;

    __device__ __forceinline__ void prefetch(int) {}  // nothing to look up: K is contiguous

    __device__ __forceinline__ void issue(int step, char* stage) {
        const int k0 = k_begin + step * BK;
        tvw::issue_plain_rows<BM, L::kAChunks>(tvw::smem_addr(stage), w, ldw, row0, n, k0);
        int xt_row[tvw::BPlan::kIters];
#pragma unroll
        for (int i = 0; i < tvw::BPlan::kIters; ++i) {
            const int k = k0 + tvw::BPlan::row(i);
            xt_row[i] = k < K ? k : -1;  // k_pad > K: the padded K rows read as zeros
        }
        tvw::issue_activation_rows(tvw::smem_addr(stage + L::kABytes), xt, m8, tok0, xt_row);
    }
};

}  // namespace

extern "C" __global__ void __launch_bounds__(tvw::kThreads)
    dense_gemm(const int4* __restrict__ tasks, const __half* __restrict__ w, int n, int ldw,
               const __half* __restrict__ xt, int K, int m8, __half* __restrict__ yt,
               float* __restrict__ ws) {
    extern __shared__ __align__(128) char smem[];
    const int4 task = tasks[blockIdx.x];
    const int tile = task.x, block = task.y, k_begin = task.z, k_end = task.w;

    DenseLoader loader{w, n, ldw, xt, K, m8, tile * BM, block * BN, k_begin};
    float acc[tvw::kMT][tvw::kNT][4];
    tvw::zero(acc);
    tvw::pipeline<false>(loader, (k_end - k_begin) / BK, smem,
                         [&](const char* stage) { tvw::warp_stage_dense(stage, acc); });

    const bool split = !(k_begin == 0 && k_end == ldw);
    const int row0 = tile * BM;
    auto row_of = [&](int r) { return row0 + r < n ? row0 + r : -1; };
    tvw::epilogue<false>(acc, smem, row_of, split, block * BN, m8, yt, ws);
}

TVWSIM_DEFINE_FINALIZE_KERNEL()
