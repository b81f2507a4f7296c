// common.cuh - the device-side building blocks shared by every tvwsim GEMM kernel.
//
// Every kernel computes one output tile  YT[rows, tokens] = W[rows, :] @ XT[:, tokens]
// (Y.T = W @ X.T, docs/formats.md): the weight is the mma's A operand (row-major, K
// contiguous), the K-major activations XT are the B operand. The levels, as in CUTLASS:
//
//   CTA    : a BM x BN output tile, one task of the schedule (blockIdx.x = task index);
//   stage  : BK logical K, copied global -> shared with cp.async, STAGES of them in flight;
//   warp   : a WTM x WTN piece of the CTA tile (WARPS warps as WARPS_M x WARPS_N);
//   mma    : m16n8k16 (dense) or m16n8k32 with a 2:4 A operand (sparse) on the tensor core.
//
// The tile shape, warps, warp grid and stages are compile-time constants: the build passes
// -DBM= -DBN= -DBK= -DWARPS= -DWARPS_M= -DSTAGES= from the same KernelConfig the simulator
// uses, so "the model's kernel" and "the measured kernel" are one object.
//
// What each pattern file adds is a *loader* (where the bytes of one stage come from:
// consecutive K for dense/vw, a gathered kept-K list for tw/tvw, present blocks for bw)
// and a *row map* (where the output rows go). The pipeline, the warp-level mma loop and
// the epilogue below are shared.

#pragma once

#include <cuda_fp16.h>
#include <stdint.h>

// ---- compile-time configuration (from tvwsim.config.KernelConfig) -------------------
// The warp grid is the config's (KernelConfig.warp_grid), never recomputed here: like a
// CUTLASS warp shape it is a parameter, so host and device cannot pick different splits.
// A build that sets the tile must set the split too; the defaults below are a 128 x 128
// tile of 2 x 2 warps (for the probe kernels, which use none of it).
#if (defined(BM) || defined(BN) || defined(WARPS)) && !defined(WARPS_M)
#error "WARPS_M (warps along BM) must be given with BM, BN and WARPS: KernelConfig.warp_grid"
#endif
#ifndef BM
#define BM 128
#endif
#ifndef BN
#define BN 128
#endif
#ifndef BK
#define BK 32
#endif
#ifndef WARPS
#define WARPS 4
#endif
#ifndef WARPS_M
#define WARPS_M 2
#endif
#ifndef STAGES
#define STAGES 3
#endif

namespace tvw {

constexpr int kThreads = 32 * WARPS;

// ---- warp grid ----------------------------------------------------------------------
// WARPS_M x WARPS_N warps tile the CTA tile; each warp owns a WTM x WTN piece. The host
// picks the most square warp tile (fewest fragment loads per mma); here it only has to fit.
constexpr int kWarpsM = WARPS_M;
static_assert(kWarpsM > 0 && WARPS % kWarpsM == 0, "WARPS_M must divide WARPS");
constexpr int kWarpsN = WARPS / kWarpsM;
static_assert(BM % (16 * kWarpsM) == 0,
              "WARPS_M must split BM into warp tiles of 16-row multiples");
static_assert(BN % (16 * kWarpsN) == 0,
              "WARPS / WARPS_M must split BN into warp tiles of 16-token multiples");
constexpr int kWTM = BM / kWarpsM;  // warp tile rows (weight rows)
constexpr int kWTN = BN / kWarpsN;  // warp tile columns (tokens)
constexpr int kMT = kWTM / 16;      // mma tiles along M per warp
constexpr int kNT = kWTN / 8;       // mma tiles along N per warp
static_assert(kNT % 2 == 0, "the dense B fragments are loaded two n8 tiles at a time");

// ---- shared memory layout -----------------------------------------------------------
// One stage holds, in this order:
//   A  : the weight tile, BM rows x A_ELEMS fp16 (BK dense, BK / 2 compressed when sparse)
//   E  : sparse only: metadata, [BM / 16][BK / 64][32] uint32, lane-ordered as in memory
//   B  : the activation tile, BK rows (K) x BN tokens fp16 (K-major, like XT)
// All rows are stored as 16-byte chunks permuted by an XOR swizzle (see swz below), so
// the pipeline needs exactly KernelConfig.pipeline_smem_bytes and no padding.
template <bool SPARSE>
struct StageLayout {
    static constexpr int kAElems = SPARSE ? BK / 2 : BK;          // fp16 per A row
    static constexpr int kAChunks = kAElems / 8;                  // 16-byte chunks per A row
    static constexpr int kBChunks = BN / 8;                       // 16-byte chunks per B row
    static constexpr int kABytes = BM * kAElems * 2;
    static constexpr int kEWords = SPARSE ? (BM / 16) * (BK / 64) * 32 : 0;
    static constexpr int kEBytes = kEWords * 4;
    static constexpr int kBBytes = BK * BN * 2;
    static constexpr int kStageBytes = kABytes + kEBytes + kBBytes;
    static constexpr int kPipelineBytes = STAGES * kStageBytes;
    // The epilogue reuses the pipeline's memory for a BM x (BN + 8) fp16 tile: 8 halves
    // (16 bytes) of padding per row shift successive rows by 4 banks, so the 8 rows x 4
    // lanes of one fragment store hit 32 distinct banks.
    static constexpr int kEpilogueStride = BN + 8;
    static constexpr int kEpilogueBytes = BM * kEpilogueStride * 2;
    static constexpr int kSmemBytes =
        kPipelineBytes > kEpilogueBytes ? kPipelineBytes : kEpilogueBytes;
    static_assert(kAChunks >= 1, "BK too small for 16-byte copies");
    static_assert(!SPARSE || BK % 64 == 0, "sparse kernels step K in multiples of 64");
    static_assert(SPARSE || BK % 16 == 0, "dense kernels step K in multiples of 16");
};

// XOR swizzle of 16-byte chunks. ldmatrix reads 8 rows x 16 bytes per 8x8 matrix, one
// row address per lane; the 8 rows are conflict-free only if their chunks land in 8
// different 16-byte bank groups of the 128-byte bank window. Row r, chunk c is stored at
// chunk  c ^ f(r)  of its row:
//   rows of >= 8 chunks (>= 128 bytes): f(r) = r mod 8. Rows r..r+7 all start in bank 0,
//     the XOR spreads one logical chunk over all 8 bank groups.
//   rows of 4 (2) chunks: two (four) rows share one 128-byte window; f(r) = (r / 2) mod 4
//     ((r / 4) mod 2) gives each pair (quad) of rows its own permutation, which again
//     yields 8 distinct bank groups for 8 consecutive rows.
// cp.async writes whole chunks, so the swizzle costs nothing on the store side.
// Returns the chunk index from the start of the tile.
template <int CHUNKS>
__device__ __forceinline__ int swz(int row, int chunk) {
    static_assert((CHUNKS & (CHUNKS - 1)) == 0 || CHUNKS % 8 == 0,
                  "row length must be a power of two or a multiple of 8 chunks");
    if constexpr (CHUNKS >= 8) {
        return row * CHUNKS + (chunk ^ (row & 7));
    } else {
        return row * CHUNKS + (chunk ^ ((row / (8 / CHUNKS)) & (CHUNKS - 1)));
    }
}

// ---- PTX wrappers -------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy that bypasses registers and L1 (.cg). src_size = 0
// writes 16 zero bytes and reads nothing: that is how padded kept-K rows (index -1),
// absent bw blocks and ragged edges become zeros without a branch or any traffic.
// `src` must still be a valid address, so callers pass a tensor base when !valid.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
    const int src_size = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(src_size));
}

__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::);
}

// Wait until at most N committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Four 8x8 fp16 matrices; lane l gives the address of row l % 8 of matrix l / 8 and
// receives, per matrix, row l / 4, columns 2 (l % 4) and +1.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// Same, transposed: lane l receives column l / 4, rows 2 (l % 4) and +1 of each matrix.
// With K-major activations in shared memory ([k][token]) that is exactly the mma's
// "col" B fragment (two consecutive k of one token in one register).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// D = A (16x16, row) * B (16x8, col) + D, fp16 in, fp32 accumulate.
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4],
                                             uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// D = A (16x32 logical, 2:4, stored as 16x16) * B (32x8, col) + D on the sparse tensor
// core. `e` is this lane's metadata word; SELECTOR (an immediate: ptxas rejects a
// register) says which lanes of each quad supply it: 0 -> lanes 4g+0, 4g+1 (logical K
// 0-31 of a 64-K metadata chunk), 1 -> lanes 4g+2, 4g+3 (K 32-63). ::ordered_metadata
// requires the two positions of every nibble in ascending order, which the encoder
// guarantees (docs/formats.md).
template <int SELECTOR>
__device__ __forceinline__ void mma_sp_m16n8k32(float (&d)[4], const uint32_t (&a)[4],
                                                const uint32_t (&b)[4], uint32_t e) {
    static_assert(SELECTOR == 0 || SELECTOR == 1, "m16n8k32 f16 selector is 0 or 1");
    asm volatile(
        "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, %13;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]),
          "r"(b[3]), "r"(e), "n"(SELECTOR));
}

// Fire-and-forget fp32 add in L2 (no return value, so it is a RED, not an ATOM).
__device__ __forceinline__ void red_add_f32(float* p, float v) {
    asm volatile("red.global.add.f32 [%0], %1;\n" ::"l"(p), "f"(v) : "memory");
}

// ---- per-thread copy assignment -----------------------------------------------------
// A tile of ROWS x CHUNKS 16-byte chunks is copied by THREADS threads (all of the CTA by
// default; wgmma.cuh's producer warpgroup: the 128 from FIRST_THREAD), thread `tid`
// taking chunks tid, tid + THREADS, ...: consecutive threads take consecutive chunks of a
// row, so a warp's copies are contiguous in global memory (coalesced) for plain rows.
template <int ROWS, int CHUNKS, int THREADS = kThreads, int FIRST_THREAD = 0>
struct ChunkPlan {
    static constexpr int kTotal = ROWS * CHUNKS;
    static constexpr int kIters = (kTotal + THREADS - 1) / THREADS;
    // This thread's index among the THREADS that share the copy.
    __device__ __forceinline__ static int tid() {
        return static_cast<int>(threadIdx.x) - FIRST_THREAD;
    }
    __device__ __forceinline__ static bool active(int i) {
        return kTotal % THREADS == 0 || tid() + i * THREADS < kTotal;
    }
    __device__ __forceinline__ static int row(int i) { return (tid() + i * THREADS) / CHUNKS; }
    __device__ __forceinline__ static int chunk(int i) { return (tid() + i * THREADS) % CHUNKS; }
};

// ---- stage copies shared by several loaders ----------------------------------------
// A tile of plain rows: row r of the tile is row `row0 + r` of a row-major fp16 matrix
// with `ld` elements per row, starting at column `col0`; rows >= `rows_valid` are
// zero-filled (ragged N edge). Used for dense values, vw/tw/tvw (compressed) values.
template <int ROWS, int CHUNKS>
__device__ __forceinline__ void issue_plain_rows(uint32_t dst, const __half* __restrict__ src,
                                                 int64_t ld, int row0, int rows_valid,
                                                 int64_t col0) {
    using P = ChunkPlan<ROWS, CHUNKS>;
#pragma unroll
    for (int i = 0; i < P::kIters; ++i) {
        if (!P::active(i)) continue;
        const int r = P::row(i);
        const int c = P::chunk(i);
        const bool ok = row0 + r < rows_valid;
        const __half* from = ok ? src + (row0 + r) * ld + col0 + c * 8 : src;
        cp_async_16(dst + 16 * swz<CHUNKS>(r, c), from, ok);
    }
}

// Per-thread plan of the activation copies of one stage: BK rows x BN/8 chunks.
using BPlan = ChunkPlan<BK, BN / 8>;

// Where chunk c (8 tokens) of stage row r lands, in bytes from the tile's start: the
// swizzled K-major rows of these kernels (wgmma.cuh places them in its own layout).
struct SwizzledRows {
    __device__ __forceinline__ static uint32_t offset(int r, int c) {
        return 16 * swz<BN / 8>(r, c);
    }
};

// The activation tile: stage row r (0 .. BK-1) is XT row `xt_row[i]` for this thread's
// i-th chunk, or a zero row when xt_row[i] < 0 (padded kept-K entry, K past the end,
// absent block). Tokens at or past m8 are zero-filled too (ragged M edge).
// `Plan` says which threads copy which chunks (every thread of the CTA by default).
template <class Placement = SwizzledRows, class Plan = BPlan>
__device__ __forceinline__ void issue_activation_rows(uint32_t dst,
                                                      const __half* __restrict__ xt, int m8,
                                                      int tok0,
                                                      const int (&xt_row)[Plan::kIters]) {
#pragma unroll
    for (int i = 0; i < Plan::kIters; ++i) {
        if (!Plan::active(i)) continue;
        const int r = Plan::row(i);
        const int c = Plan::chunk(i);
        const int tok = tok0 + c * 8;
        const bool ok = xt_row[i] >= 0 && tok < m8;
        const __half* from = ok ? xt + static_cast<int64_t>(xt_row[i]) * m8 + tok : xt;
        cp_async_16(dst + Placement::offset(r, c), from, ok);
    }
}

// Sparse-only helpers exist only in the sparse kernels (vw.cu, tvw.cu define
// TVWSIM_SPARSE_KERNEL before including this header). They are ordinary functions, so a
// dense build that saw them would compile them for its own BK: BK = 32 fails the sparse
// StageLayout's static_assert, and BK = 192 gives a 12-chunk compressed row, which the
// swizzle does not cover.
#ifdef TVWSIM_SPARSE_KERNEL
// Lane-ordered 2:4 metadata of one stage: (BM / 16) x (BK / 64) blocks of 32 words
// (128 bytes = 8 chunks), copied unchanged. Block (rb, kc) of the stage comes from
// `meta + (rb * chunks_per_row_block + kc0 + kc) * 32`. Row blocks past the last stored
// one (rb >= rb_valid, the ragged N edge of vw) copy the last stored block's words
// instead: their values are zero-filled, so the product is zero either way, but a
// zero-filled metadata word would name positions (0, 0), which ::ordered_metadata
// leaves undefined. Borrowed legal words keep every mma.sp well defined.
__device__ __forceinline__ void issue_metadata(uint32_t dst, const uint32_t* __restrict__ meta,
                                               int rb0, int rb_valid,
                                               int64_t chunks_per_row_block, int64_t kc0) {
    using P = ChunkPlan<(BM / 16) * (BK / 64), 8>;
#pragma unroll
    for (int i = 0; i < P::kIters; ++i) {
        if (!P::active(i)) continue;
        const int blk = P::row(i);
        const int c = P::chunk(i);
        const int rb = blk / (BK / 64);
        const int kc = blk % (BK / 64);
        const int src_rb = rb0 + rb < rb_valid ? rb0 + rb : rb_valid - 1;
        const uint32_t* from = meta + (src_rb * chunks_per_row_block + kc0 + kc) * 32 + c * 4;
        // No swizzle: a warp reads 32 consecutive words of one block, conflict-free.
        cp_async_16(dst + blk * 128 + c * 16, from, true);
    }
}

#endif  // TVWSIM_SPARSE_KERNEL

// The compile-time shared memory size must equal the config's footprint
// (KernelConfig.smem_bytes, which the build passes as TVW_SMEM_BYTES): the manifest, the
// launcher and the simulator all read that number.
#ifdef TVW_SMEM_BYTES
#define TVWSIM_CHECK_SMEM(SPARSE)                                                      \
    static_assert(tvw::StageLayout<SPARSE>::kSmemBytes == TVW_SMEM_BYTES,              \
                  "KernelConfig.smem_bytes and common.cuh disagree on the shared memory size")
#else
#define TVWSIM_CHECK_SMEM(SPARSE) static_assert(true, "")
#endif

// ---- the CTA main loop: a STAGES-deep cp.async pipeline -----------------------------
// Stage s of the task lives in buffer s % STAGES. Before computing stage `it` the CTA
// waits until at most STAGES - 2 copy groups are pending (so group `it` has landed),
// synchronises (so every warp has finished computing stage it - 1, whose buffer is about
// to be overwritten), then issues the copies of stage it + STAGES - 1 and computes stage
// it while those copies fly. One commit per iteration, even an empty one, keeps the
// group count equal to the stage index.
//
// Loader interface (one per pattern):
//   prefetch(step): read the indices stage `step` needs (kept-K list, block table) into
//                   registers with ordinary loads; issued one iteration early so their
//                   latency hides behind a stage of mma;
//   issue(step, stage): start the cp.async copies of stage `step` into `stage`.
template <bool SPARSE, class Loader, class Compute>
__device__ __forceinline__ void pipeline(Loader& loader, int k_steps, char* smem,
                                         Compute&& compute) {
    using L = StageLayout<SPARSE>;
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < k_steps) {
            loader.prefetch(s);
            loader.issue(s, smem + s * L::kStageBytes);
        }
        cp_async_commit();
    }
    if (STAGES - 1 < k_steps) loader.prefetch(STAGES - 1);

    for (int it = 0; it < k_steps; ++it) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int next = it + STAGES - 1;
        if (next < k_steps) loader.issue(next, smem + (next % STAGES) * L::kStageBytes);
        cp_async_commit();
        if (next + 1 < k_steps) loader.prefetch(next + 1);
        compute(smem + (it % STAGES) * L::kStageBytes);
    }
    // Drain before the epilogue reuses the buffers.
    cp_async_wait<0>();
    __syncthreads();
}

// ---- warp-level compute of one stage ------------------------------------------------
struct WarpPos {
    int lane, wm0, wn0;  // lane, first row and first token of this warp's tile in the CTA
    __device__ __forceinline__ WarpPos() {
        lane = threadIdx.x & 31;
        const int warp = threadIdx.x >> 5;
        wm0 = (warp / kWarpsN) * kWTM;
        wn0 = (warp % kWarpsN) * kWTN;
    }
};

// Dense: BK / 16 steps of m16n8k16. Per step, each warp loads its MT A fragments
// (ldmatrix.x4: lane l addresses row l % 16, 8-column half l / 16 of a 16x16 block,
// i.e. the four 8x8 quarters in the order the A fragment wants them) and its NT B
// fragments (ldmatrix.x4.trans on 16 K x 16 tokens: quarters (k0-7, n0-7), (k8-15, n0-7),
// (k0-7, n8-15), (k8-15, n8-15) = the two registers of two n8 tiles), then issues
// MT x NT mma.
__device__ __forceinline__ void warp_stage_dense(const char* stage,
                                                 float (&acc)[kMT][kNT][4]) {
    using L = StageLayout<false>;
    const WarpPos w;
    const uint32_t a_base = smem_addr(stage);
    const uint32_t b_base = smem_addr(stage + L::kABytes);
#pragma unroll
    for (int ks = 0; ks < BK / 16; ++ks) {
        uint32_t af[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
            const int row = w.wm0 + mt * 16 + (w.lane & 15);
            ldmatrix_x4(af[mt], a_base + 16 * swz<L::kAChunks>(row, ks * 2 + (w.lane >> 4)));
        }
#pragma unroll
        for (int np = 0; np < kNT / 2; ++np) {
            uint32_t bf[4];
            const int k = ks * 16 + (w.lane & 15);
            const int chunk = (w.wn0 + np * 16) / 8 + (w.lane >> 4);
            ldmatrix_x4_trans(bf, b_base + 16 * swz<L::kBChunks>(k, chunk));
#pragma unroll
            for (int mt = 0; mt < kMT; ++mt) {
                mma_m16n8k16(acc[mt][2 * np], af[mt], bf[0], bf[1]);
                mma_m16n8k16(acc[mt][2 * np + 1], af[mt], bf[2], bf[3]);
            }
        }
    }
}

#ifdef TVWSIM_SPARSE_KERNEL
// Sparse: BK / 32 steps of m16n8k32. The compressed A tile (BM x BK/2) is loaded exactly
// like a dense A tile (one ldmatrix.x4 per 16 rows x 16 stored values = 32 logical K).
// B needs 32 K x 8 tokens per mma: one ldmatrix.x4.trans whose four matrices are
// k0-7, k8-15, k16-23, k24-31 of the same 8 tokens (lane l addresses K row l).
// Metadata: one uint32 per lane per (16-row block, 64-K chunk), read straight from the
// lane-ordered words in shared memory; the same register serves the chunk's first k32
// (selector 0) and second k32 (selector 1).
__device__ __forceinline__ void warp_stage_sparse(const char* stage,
                                                  float (&acc)[kMT][kNT][4]) {
    using L = StageLayout<true>;
    const WarpPos w;
    const uint32_t a_base = smem_addr(stage);
    const uint32_t* e_tile = reinterpret_cast<const uint32_t*>(stage + L::kABytes);
    const uint32_t b_base = smem_addr(stage + L::kABytes + L::kEBytes);
    uint32_t e[kMT];
#pragma unroll
    for (int ks = 0; ks < BK / 32; ++ks) {
        if (ks % 2 == 0) {
#pragma unroll
            for (int mt = 0; mt < kMT; ++mt) {
                const int rb = w.wm0 / 16 + mt;  // 16-row block inside the CTA tile
                e[mt] = e_tile[(rb * (BK / 64) + ks / 2) * 32 + w.lane];
            }
        }
        uint32_t af[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
            const int row = w.wm0 + mt * 16 + (w.lane & 15);
            ldmatrix_x4(af[mt], a_base + 16 * swz<L::kAChunks>(row, ks * 2 + (w.lane >> 4)));
        }
        // One n8 column of B at a time (4 registers live instead of 4 * NT): with 128
        // accumulators per lane, holding all B fragments of a k32 step would spill.
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
            uint32_t bf[4];
            const int k = ks * 32 + w.lane;
            ldmatrix_x4_trans(bf, b_base + 16 * swz<L::kBChunks>(k, (w.wn0 + nt * 8) / 8));
#pragma unroll
            for (int mt = 0; mt < kMT; ++mt) {
                if (ks % 2 == 0)
                    mma_sp_m16n8k32<0>(acc[mt][nt], af[mt], bf, e[mt]);
                else
                    mma_sp_m16n8k32<1>(acc[mt][nt], af[mt], bf, e[mt]);
            }
        }
    }
}

#endif  // TVWSIM_SPARSE_KERNEL

// ---- epilogue -----------------------------------------------------------------------
// The second half of a whole-K epilogue, shared with the warpgroup kernels (wgmma.cuh):
// the CTA's fp16 tile is staged in shared memory (BM rows of kEpilogueStride halves);
// every thread stores 16-byte chunks of whole output rows, coalesced wherever the row
// map sends each row.
template <bool SPARSE, class RowMap>
__device__ __forceinline__ void store_staged_rows(const char* smem, const RowMap& row_of,
                                                  int tok0, int m8, __half* __restrict__ yt) {
    using L = StageLayout<SPARSE>;
    using Plan = ChunkPlan<BM, BN / 8>;
    const __half* src = reinterpret_cast<const __half*>(smem);
#pragma unroll
    for (int i = 0; i < Plan::kIters; ++i) {
        if (!Plan::active(i)) continue;
        const int r = Plan::row(i);
        const int c = Plan::chunk(i);
        const int out = row_of(r);
        const int tok = tok0 + c * 8;
        if (out >= 0 && tok < m8) {  // m8 % 8 == 0: a chunk is wholly in or out
            *reinterpret_cast<int4*>(yt + static_cast<int64_t>(out) * m8 + tok) =
                *reinterpret_cast<const int4*>(src + r * L::kEpilogueStride + c * 8);
        }
    }
}

// Accumulator element (mt, nt, i) of lane (g = lane / 4, t = lane % 4) is output row
// wm0 + 16 mt + g + 8 (i / 2), token wn0 + 8 nt + 2 t + (i % 2).
//
// Whole-K task: convert to fp16, stage the tile through shared memory and write each
// output row with 16-byte stores (a row of YT is contiguous over tokens, so this is
// coalesced no matter where the row map sends the row).
// Split-K task (k range is part of the tile's K): add the fp32 partial sums into the
// workspace with red.global.add.f32; a finalize pass converts those rows later.
// RowMap: r (0 .. BM-1) -> output row, or -1 when the row is not stored.
template <bool SPARSE, class RowMap>
__device__ __forceinline__ void epilogue(float (&acc)[kMT][kNT][4], char* smem,
                                         const RowMap& row_of, bool split, int tok0, int m8,
                                         __half* __restrict__ yt, float* __restrict__ ws) {
    using L = StageLayout<SPARSE>;
    const WarpPos w;
    const int g = w.lane >> 2;
    const int t = w.lane & 3;
    if (split) {
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int out = row_of(w.wm0 + mt * 16 + g + 8 * h);
                if (out < 0) continue;
                float* dst = ws + static_cast<int64_t>(out) * m8;
#pragma unroll
                for (int nt = 0; nt < kNT; ++nt) {
                    const int tok = tok0 + w.wn0 + nt * 8 + 2 * t;
                    if (tok < m8) {  // m8 is even, so tok + 1 < m8 too
                        red_add_f32(dst + tok, acc[mt][nt][2 * h]);
                        red_add_f32(dst + tok + 1, acc[mt][nt][2 * h + 1]);
                    }
                }
            }
        return;
    }
    __half2* tile = reinterpret_cast<__half2*>(smem);
    constexpr int kStride2 = L::kEpilogueStride / 2;  // in half2
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int r = w.wm0 + mt * 16 + g + 8 * h;
                const int c2 = (w.wn0 + nt * 8) / 2 + t;
                tile[r * kStride2 + c2] =
                    __floats2half2_rn(acc[mt][nt][2 * h], acc[mt][nt][2 * h + 1]);
            }
    __syncthreads();
    store_staged_rows<SPARSE>(smem, row_of, tok0, m8, yt);
}

// Zero a CTA's accumulators.
__device__ __forceinline__ void zero(float (&acc)[kMT][kNT][4]) {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;
}

}  // namespace tvw

// ---- the finalize pass --------------------------------------------------------------
// After the main launch, one CTA per region (int4: kind, a, b, unused):
//   kind 0 (tile a, block b): rows of a split tile, tokens of one BN block: YT = fp16(WS);
//   kind 1 (tile a, block b): a (tile, block) that no task touched (a tile with no kept
//                             K): YT = 0 for its rows;
//   kind 2 (row a)          : an output row no tile owns (tw/tvw rows pruned away): YT = 0.
// `row_map` maps tile t, row r to row_map[t * BM + r] (-1: not stored); a null row_map
// means consecutive rows t * BM + r, stored when < n (dense, vw, bw).
// Every element of YT is therefore written by exactly one kernel: a test can poison YT
// with NaN and check every element.
namespace tvw {

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ void finalize_region(const int4* __restrict__ regions,
                                                const int* __restrict__ row_map, int n,
                                                int m8, const float* __restrict__ ws,
                                                __half* __restrict__ yt) {
    const int4 reg = regions[blockIdx.x];
    if (reg.x == 2) {
        for (int c = threadIdx.x; c < m8 / 8; c += blockDim.x)
            *reinterpret_cast<uint4*>(yt + static_cast<int64_t>(reg.y) * m8 + c * 8) =
                make_uint4(0, 0, 0, 0);
        return;
    }
    for (int id = threadIdx.x; id < BM * (BN / 8); id += blockDim.x) {
        const int r = id / (BN / 8);
        const int tok = reg.z * BN + (id % (BN / 8)) * 8;
        int out;
        if (row_map != nullptr) {
            out = row_map[static_cast<int64_t>(reg.y) * BM + r];
        } else {
            out = reg.y * BM + r;
            if (out >= n) out = -1;
        }
        if (out < 0 || tok >= m8) continue;
        const int64_t at = static_cast<int64_t>(out) * m8 + tok;
        uint4 packed = make_uint4(0, 0, 0, 0);
        if (reg.x == 0) {
            const float4 lo = *reinterpret_cast<const float4*>(ws + at);
            const float4 hi = *reinterpret_cast<const float4*>(ws + at + 4);
            packed = make_uint4(pack_half2(lo.x, lo.y), pack_half2(lo.z, lo.w),
                                pack_half2(hi.x, hi.y), pack_half2(hi.z, hi.w));
        }
        *reinterpret_cast<uint4*>(yt + at) = packed;
    }
}

}  // namespace tvw

// Each pattern file instantiates the finalize kernel once, so it ships in the same cubin
// (and with the same BM, BN) as the GEMM it completes.
#define TVWSIM_DEFINE_FINALIZE_KERNEL()                                                 \
    extern "C" __global__ void __launch_bounds__(256)                                   \
        finalize_rows(const int4* __restrict__ regions, const int* __restrict__ row_map, \
                      int n, int m8, const float* __restrict__ ws,                      \
                      __half* __restrict__ yt) {                                        \
        tvw::finalize_region(regions, row_map, n, m8, ws, yt);                          \
    }
