// bw.cu - block sparsity (BSR): b x b blocks of W are kept or dropped whole.
//
// Buffers (docs/formats.md, "bw"):
//   values      fp16  [nnzb, b, b]          kept blocks, row-major inside a block
//   tile_col_ptr int32 [tiles + 1]           per CTA row tile (BM rows = BM / b block rows):
//   tile_col    int32 [...]                  the union of kept block columns of its block
//                                            rows, ascending
//   tile_block  int32 [..., BM / b]          per (tile, union column, block row): index into
//                                            values, or -1 for an absent block
//   xt, yt, ws, tasks as in dense.cu; k_begin, k_end are union-column positions times b
//
// A CTA walks its tile's union columns: one union column is b logical K, and its BK-deep
// stage is a dense BM x BK weight tile assembled from up to BM / b blocks (an absent
// block is a zero-filled cp.async: no memory traffic, but the tensor core still
// multiplies its zeros - a block pattern saves only what a whole union column saves)
// plus the BK activation rows of that union column. Only union columns a tile needs
// are visited, so a column no block row of the tile keeps is skipped entirely.
//
// The block table lookups of a stage are read into registers one iteration ahead, like
// the kept-K indices of tw.cu.
//
// The block side b is a compile-time constant, -DTVWSIM_BW_BLOCK (one cubin per shipped
// block, kernels/build.py BW_BLOCKS): a power of two, so the loader's p / b, p % b and
// r / b are shifts and masks. With b a kernel argument they were integer divisions
// (a reciprocal and IMAD.HI sequences per chunk, every stage), which made the loader
// issue bound.

#include "common.cuh"

TVWSIM_CHECK_SMEM(false);

#ifndef TVWSIM_BW_BLOCK
#error "TVWSIM_BW_BLOCK (the bw block side) must be given: kernels/build.py BW_BLOCKS"
#endif

namespace {
constexpr int kB = TVWSIM_BW_BLOCK;  // block side
static_assert(kB >= 16 && (kB & (kB - 1)) == 0,
              "the bw block is a power of two of at least 16 (whole mma rows)");
static_assert(BM % kB == 0, "a CTA tile holds whole block rows");
static_assert(kB % BK == 0, "a stage never straddles two block columns");
static_assert(kB % 8 == 0, "a 16-byte chunk never straddles a block");
constexpr int kBlocksPerCol = BM / kB;  // block rows per CTA row tile

using L = tvw::StageLayout<false>;
using APlan = tvw::ChunkPlan<BM, L::kAChunks>;

struct BwLoader {
    const __half* values;
    const int* tile_cols;    // this tile's union columns
    const int* tile_blocks;  // this tile's [n_union, BM / b] block table
    int n_union;             // union columns of this tile
    int block_rows_valid;    // block rows of this tile that exist (ragged N edge)
    const __half* xt;
    int K, m8, tok0, k_begin;
    int next_a[APlan::kIters];        // element offset into values, or -1 (absent block)
    int next_b[tvw::BPlan::kIters];   // XT row, or -1

    __device__ __forceinline__ void prefetch(int step) {
        const int k0 = k_begin + step * BK;
#pragma unroll
        for (int i = 0; i < APlan::kIters; ++i) {
            const int r = APlan::row(i);
            // p >= 0: unsigned, so / and % are a shift and a mask with no sign fix-up.
            const unsigned p = k0 + APlan::chunk(i) * 8;  // logical position in the tile's K
            const int u = static_cast<int>(p / kB);       // union column
            const int o = static_cast<int>(p % kB);       // K offset inside the block
            const int br = r / kB;                        // block row inside the tile
            int blk = -1;
            if (APlan::active(i) && u < n_union && br < block_rows_valid)
                blk = __ldg(tile_blocks + u * kBlocksPerCol + br);
            next_a[i] = blk < 0 ? -1 : (blk * kB + r % kB) * kB + o;
        }
#pragma unroll
        for (int i = 0; i < tvw::BPlan::kIters; ++i) {
            const unsigned p = k0 + tvw::BPlan::row(i);
            const int u = static_cast<int>(p / kB), o = static_cast<int>(p % kB);
            int k = -1;
            if (tvw::BPlan::active(i) && u < n_union) k = __ldg(tile_cols + u) * kB + o;
            next_b[i] = k < K ? k : -1;  // the last block column may overhang K
        }
    }

    __device__ __forceinline__ void issue(int, char* stage) {
        const uint32_t a_base = tvw::smem_addr(stage);
#pragma unroll
        for (int i = 0; i < APlan::kIters; ++i) {
            if (!APlan::active(i)) continue;
            const bool ok = next_a[i] >= 0;
            const __half* from = ok ? values + next_a[i] : values;
            tvw::cp_async_16(a_base + 16 * tvw::swz<L::kAChunks>(APlan::row(i), APlan::chunk(i)),
                             from, ok);
        }
        tvw::issue_activation_rows(tvw::smem_addr(stage + L::kABytes), xt, m8, tok0, next_b);
    }
};

}  // namespace

extern "C" __global__ void __launch_bounds__(tvw::kThreads)
    bw_gemm(const int4* __restrict__ tasks, const __half* __restrict__ values,
            const int* __restrict__ tile_col_ptr, const int* __restrict__ tile_col,
            const int* __restrict__ tile_block, int n_block_rows, int n,
            const __half* __restrict__ xt, int K, int m8, __half* __restrict__ yt,
            float* __restrict__ ws) {
    extern __shared__ __align__(128) char smem[];
    const int4 task = tasks[blockIdx.x];
    const int tile = task.x, block = task.y, k_begin = task.z, k_end = task.w;
    const int u0 = tile_col_ptr[tile];
    const int n_union = tile_col_ptr[tile + 1] - u0;
    const int rows_left = n_block_rows - tile * kBlocksPerCol;

    BwLoader loader{values,
                    tile_col + u0,
                    tile_block + static_cast<int64_t>(u0) * kBlocksPerCol,
                    n_union,
                    rows_left < kBlocksPerCol ? rows_left : kBlocksPerCol,
                    xt,
                    K,
                    m8,
                    block * BN,
                    k_begin,
                    {},
                    {}};
    float acc[tvw::kMT][tvw::kNT][4];
    tvw::zero(acc);
    tvw::pipeline<false>(loader, (k_end - k_begin) / BK, smem,
                         [&](const char* stage) { tvw::warp_stage_dense(stage, acc); });

    const bool split = !(k_begin == 0 && k_end == n_union * kB);
    const int row0 = tile * BM;
    auto row_of = [&](int r) { return row0 + r < n ? row0 + r : -1; };
    tvw::epilogue<false>(acc, smem, row_of, split, block * BN, m8, yt, ws);
}

TVWSIM_DEFINE_FINALIZE_KERNEL()
