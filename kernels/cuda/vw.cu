// vw.cu - 2:4 (vector-wise) weight on the sparse tensor core: mma.sp m16n8k32.
//
// Buffers (docs/formats.md, "vw"):
//   values fp16   [n_pad, k_pad / 2]       per aligned group of 4 K, its 2 stored values
//                                          in ascending K order (n_pad = roundup(n, 16),
//                                          k_pad = roundup(k, 64))
//   meta   uint32 [n_pad / 16, k_pad / 64, 32]  lane-ordered metadata: block (row block,
//                                          64-K chunk) is the 32 words the 32 lanes of a
//                                          warp hand to two mma.sp (selectors 0 and 1)
//   xt, yt, ws, tasks as in dense.cu (k_begin, k_end are logical K, 0 .. k_pad)
//
// A stage of BK logical K moves half the weight bytes of a dense stage plus BM * BK / 8
// bytes of metadata; the activation tile is the dense one (the tensor core itself picks
// the two activation rows of each group of four using the metadata). The main loop is
// the dense one with the mma swapped: that is the whole point of 2:4.

#define TVWSIM_SPARSE_KERNEL 1  // compile the mma.sp helpers of common.cuh
#include "common.cuh"

TVWSIM_CHECK_SMEM(true);

namespace {

using L = tvw::StageLayout<true>;

struct VwLoader {
    const __half* values;
    const uint32_t* meta;
    int n_pad, k_pad;
    const __half* xt;
    int K, m8;
    int row0, tok0, k_begin;

    __device__ __forceinline__ void prefetch(int) {}

    __device__ __forceinline__ void issue(int step, char* stage) {
        const int k0 = k_begin + step * BK;  // logical K; stored column k0 / 2
        tvw::issue_plain_rows<BM, L::kAChunks>(tvw::smem_addr(stage), values, k_pad / 2, row0,
                                               n_pad, k0 / 2);
        tvw::issue_metadata(tvw::smem_addr(stage + L::kABytes), meta, row0 / 16, n_pad / 16,
                            k_pad / 64, k0 / 64);
        int xt_row[tvw::BPlan::kIters];
#pragma unroll
        for (int i = 0; i < tvw::BPlan::kIters; ++i) {
            const int k = k0 + tvw::BPlan::row(i);
            xt_row[i] = k < K ? k : -1;
        }
        tvw::issue_activation_rows(tvw::smem_addr(stage + L::kABytes + L::kEBytes), xt, m8,
                                   tok0, xt_row);
    }
};

}  // namespace

extern "C" __global__ void __launch_bounds__(tvw::kThreads)
    vw_gemm(const int4* __restrict__ tasks, const __half* __restrict__ values,
            const uint32_t* __restrict__ meta, int n, int n_pad, int k_pad,
            const __half* __restrict__ xt, int K, int m8, __half* __restrict__ yt,
            float* __restrict__ ws) {
    extern __shared__ __align__(128) char smem[];
    const int4 task = tasks[blockIdx.x];
    const int tile = task.x, block = task.y, k_begin = task.z, k_end = task.w;

    VwLoader loader{values, meta, n_pad, k_pad, xt, K, m8, tile * BM, block * BN, k_begin};
    float acc[tvw::kMT][tvw::kNT][4];
    tvw::zero(acc);
    tvw::pipeline<true>(loader, (k_end - k_begin) / BK, smem,
                        [&](const char* stage) { tvw::warp_stage_sparse(stage, acc); });

    const bool split = !(k_begin == 0 && k_end == k_pad);
    const int row0 = tile * BM;
    auto row_of = [&](int r) { return row0 + r < n ? row0 + r : -1; };
    tvw::epilogue<true>(acc, smem, row_of, split, block * BN, m8, yt, ws);
}

TVWSIM_DEFINE_FINALIZE_KERNEL()
