// wgmma.cuh - Hopper (sm_90a) building blocks: warpgroup MMA fed from shared memory.
//
// The sm_80-style kernels (common.cuh) load every operand into registers with ldmatrix
// and issue one mma.sync per warp and 16 x 8 tile. Hopper's tensor core reaches its peak
// only through warpgroup MMA: four warps (128 threads) issue one `wgmma.mma_async` of
// 64 x N x 16 (dense) or 64 x N x 32 (2:4 sparse A) whose A and B operands the tensor core
// reads *itself* from shared memory, described by two 64-bit matrix descriptors. The
// accumulators stay in registers, spread over the warpgroup (accumulator ownership below).
//
// The levels of a kernel built on this header (<pattern>_wgmma.cu, docs/kernels.md
// section 12):
//
//   CTA        one BM x BN task of the schedule, WARPS / 4 warpgroups;
//   warpgroup  64 weight rows x BN tokens of the CTA tile, BN / 2 fp32 accumulators a thread;
//   stage      BK = 64 logical K: the weight block in one bulk copy (the launcher stores
//              the weight K-blocked and pre-swizzled, 2:4 metadata beside the values, so
//              a stage is one contiguous block), the activation tile by cp.async (the rows
//              tw/tvw gather are not a box a tensor map could describe);
//   wgmma      64 x BN x 16 (dense) or x 32 (2:4) per warpgroup and K step.
//
// Shared-memory layouts are the PTX ISA's canonical swizzled layouts (PTX ISA, "Shared
// Memory Matrix Layout"); kernels/wgmma.py emulates descriptors, swizzle, accumulator
// ownership and whole kernels in numpy and is the CPU check of everything here.
//
// Requires -arch=sm_90a: wgmma and the bulk copy are arch-specific features of sm_90.

#pragma once

#include "common.cuh"

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "warpgroup MMA kernels are compiled for sm_90a (-arch=sm_90a)"
#endif

namespace tvw {
namespace wg {

// ---- the CTA as warpgroups ------------------------------------------------------------
constexpr int kWarpgroups = WARPS / 4;
static_assert(WARPS % 4 == 0, "a warpgroup is four warps");
static_assert(BM == 64 * kWarpgroups, "each warpgroup owns 64 weight rows (the wgmma M)");
static_assert(BN % 64 == 0 && BN <= 256, "BN is whole 64-token swizzle atoms, at most 256");
static_assert(BK == 64, "a stage is 64 logical K: one 128-byte (dense) or 64-byte "
                        "(2:4 compressed) swizzle row of weight per row");

// A producer warpgroup (KernelConfig.producer_warps = 4, -DPRODUCER_WARPS=4) loads while
// the WARPS / 4 consumer warpgroups only compute; it is the CTA's last warpgroup, so the
// consumers keep threads 0 .. 32 WARPS - 1 and their rows. Without it every thread does
// both, in turn.
#ifndef PRODUCER_WARPS
#define PRODUCER_WARPS 0
#endif
constexpr int kProducerWarps = PRODUCER_WARPS;
static_assert(kProducerWarps == 0 || kProducerWarps == 4, "no producer, or one warpgroup");
constexpr int kConsumerThreads = 32 * WARPS;
constexpr int kCtaThreads = kConsumerThreads + 32 * kProducerWarps;
// Registers after the split (setmaxnreg; the launch gives every thread 168): the
// consumers hold BN / 2 accumulators, the producer the row indices and addresses of its
// 16 activation chunks a stage (with 40 it spilled them); 2 x 128 x 208 + 128 x 96 is
// exactly the SM's 64 K registers.
constexpr int kConsumerRegisters = 200;
constexpr int kProducerRegisters = 112;

// Who copies the activation chunks: every thread, or the producer's 128.
template <bool PRODUCER>
struct CopyPlanOf {
    using type = BPlan;
};
template <>
struct CopyPlanOf<true> {
    using type = ChunkPlan<BK, BN / 8, 128, kConsumerThreads>;
};
using CopyPlan = CopyPlanOf<(kProducerWarps > 0)>::type;

// ---- shared memory: swizzled rows ---------------------------------------------------------
// The tensor core applies the swizzle to the byte address it computes: in the 128-byte
// mode address bits [6:4] are XORed with bits [9:7], in the 64-byte mode bits [5:4] with
// bits [8:7]. For rows of 128 (64) bytes that puts 16-byte chunk c of row r at chunk
// c ^ (r % 8) (c ^ ((r / 2) % 4)) - common.cuh's swz rule for rows of 8 (4) chunks. A
// swizzle atom is 8 rows; every atom starts 8-row-aligned from a 1 KiB-aligned stage.
constexpr int kSwizzleRowBytes = 128;
constexpr int kAtomBytes = 8 * kSwizzleRowBytes;
constexpr uint64_t kSwizzle128B = 1, kSwizzle64B = 2;  // descriptor bits 63:62

// One stage, in this order (a 1 KiB multiple each, so every stage stays 1 KiB-aligned):
//   W  the weight block, exactly as the launcher stores it K-blocked (one bulk copy):
//      A  BM rows x 64 fp16 (dense, 128-byte rows) or 32 compressed fp16 (2:4, 64-byte
//         rows), K-major, swizzled;
//      E  2:4 only: BM / 16 blocks of 32 lane-ordered metadata words (docs/formats.md);
//   B  the activations, N-major: BN / 64 column blocks of 64 tokens; in block nb, K row
//      k at nb * BK * 128 + k * 128 bytes, 128-byte swizzle.
// One wgmma's K rows of B are 8-row atoms SBO = 1 KiB apart along K; its BN tokens are
// BN / 64 atoms LBO = BK * 128 bytes apart along N.
template <bool SPARSE>
struct Layout {
    static constexpr int kARowBytes = SPARSE ? BK : 2 * BK;
    static constexpr int kABytes = BM * kARowBytes;
    static constexpr int kEBytes = SPARSE ? (BM / 16) * (BK / 64) * 128 : 0;
    static constexpr int kWeightBytes = kABytes + kEBytes;
    static constexpr int kBBlockBytes = BK * kSwizzleRowBytes;
    static constexpr int kBBytes = BK * BN * 2;
    static constexpr int kStageBytes = kWeightBytes + kBBytes;
    static_assert(kWeightBytes % kAtomBytes == 0 && kBBytes % kAtomBytes == 0,
                  "every stage operand starts on a 1 KiB boundary");
    // A's descriptor: 8-row groups follow one another (SBO = 8 rows); a K step (16 dense
    // or 16 stored 2:4 values) is 32 bytes further along the swizzled rows.
    static constexpr uint64_t kASwizzle = SPARSE ? kSwizzle64B : kSwizzle128B;
    static constexpr uint32_t kASbo = 8 * kARowBytes;
    static constexpr uint32_t kAStepBytes = 32;
    static constexpr int kKPerMma = SPARSE ? 32 : 16;  // logical K of one wgmma
    static constexpr uint32_t kBStepBytes = kKPerMma / 8 * kAtomBytes;
    static constexpr uint32_t kBLbo = kBBlockBytes;
    static constexpr uint32_t kBSbo = kAtomBytes;
};

__device__ __forceinline__ int swizzled_chunk(int row, int chunk) { return chunk ^ (row & 7); }

// ---- matrix descriptors (PTX ISA, "Matrix Descriptor Format") ---------------------------
// bits 13:0 start address >> 4, 29:16 leading-dimension byte offset >> 4, 45:32 stride
// byte offset >> 4, 51:49 base offset (0: every atom is aligned), 63:62 swizzle mode.
__device__ __forceinline__ uint64_t descriptor(uint32_t smem_address, uint32_t lbo,
                                               uint32_t sbo, uint64_t swizzle) {
    return static_cast<uint64_t>((smem_address & 0x3FFFF) >> 4) |
           static_cast<uint64_t>(lbo >> 4) << 16 | static_cast<uint64_t>(sbo >> 4) << 32 |
           swizzle << 62;
}

// ---- warpgroup MMA ----------------------------------------------------------------------
// wgmma.fence orders this thread's earlier register writes (the zeroed accumulators)
// before the tensor core reads them; commit_group closes a batch of wgmma; wait_group N
// blocks until at most N batches are still running.
__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Make this thread's generic-proxy writes to shared memory (cp.async, st.shared) visible
// to the async proxy the tensor core reads through.
__device__ __forceinline__ void fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// One wgmma per operand shape. Inline PTX has no register arrays: every accumulator is
// one operand, so the "%0, %1, ..." list and its "+f" outputs are spelled out once per
// width (the macros) and shared by the dense and the 2:4 instruction.
#define TVWSIM_WG_REGS_64 \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define TVWSIM_WG_OUTS_64 \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), \
    "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), \
    "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), \
    "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), \
    "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), \
    "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), \
    "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), \
    "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), \
    "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define TVWSIM_WG_REGS_128 \
    TVWSIM_WG_REGS_64 ", " \
    "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, " \
    "%76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, " \
    "%88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, " \
    "%100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
    "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, " \
    "%124, %125, %126, %127"
#define TVWSIM_WG_OUTS_128 \
    TVWSIM_WG_OUTS_64, \
    "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), \
    "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), \
    "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), \
    "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
    "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), \
    "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), \
    "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), \
    "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), \
    "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), \
    "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), \
    "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

// Wgmma<N>::dense / ::sparse: one instruction of width N with R = N / 2 accumulators a
// thread; A0 .. A4 = R .. R + 4 are the operand numbers after the accumulators (the asm
// text needs them as literals).
//   dense:  D (64 x N, fp32) += A (64 x 16, K-major) * B (16 x N, N-major: imm-trans-b 1)
//   sparse: D (64 x N) += A (64 x 32 logical, 2:4, stored 64 x 16, K-major) * B (32 x N,
//           N-major); `e` is this thread's metadata word, SELECTOR the thread pair that
//           supplies it
// scale_d = 0 ignores d's old contents: a task's first K step, instead of zeroing, which
// would make ptxas serialise the wgmma pipeline.
template <int N>
struct Wgmma;

#define TVWSIM_DEFINE_WGMMA(N, R, A0, A1, A2, A3, A4)                                      \
    template <>                                                                          \
    struct Wgmma<N> {                                                                    \
        __device__ __forceinline__ static void dense(float (&d)[R], uint64_t a, uint64_t b, \
                                                     int scale_d) {                      \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #A2 ", 0;\n"                  \
                         "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32.f16.f16 {"        \
                         TVWSIM_WG_REGS_##R "}, %" #A0 ", %" #A1 ", p, 1, 1, 0, 1;\n}\n"  \
                         : TVWSIM_WG_OUTS_##R                                            \
                         : "l"(a), "l"(b), "r"(scale_d));                                \
        }                                                                                \
        template <int SELECTOR>                                                          \
        __device__ __forceinline__ static void sparse(float (&d)[R], uint64_t a, uint64_t b, \
                                                      uint32_t e, int scale_d) {         \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #A4 ", 0;\n"                  \
                         "wgmma.mma_async.sp.sync.aligned.m64n" #N "k32.f32.f16.f16 {"     \
                         TVWSIM_WG_REGS_##R "}, %" #A0 ", %" #A1 ", %" #A2 ", %" #A3       \
                         ", p, 1, 1, 0, 1;\n}\n"                                          \
                         : TVWSIM_WG_OUTS_##R                                            \
                         : "l"(a), "l"(b), "r"(e), "n"(SELECTOR), "r"(scale_d));         \
        }                                                                                \
    }

TVWSIM_DEFINE_WGMMA(128, 64, 64, 65, 66, 67, 68);
TVWSIM_DEFINE_WGMMA(256, 128, 128, 129, 130, 131, 132);

#undef TVWSIM_DEFINE_WGMMA
#undef TVWSIM_WG_REGS_64
#undef TVWSIM_WG_OUTS_64
#undef TVWSIM_WG_REGS_128
#undef TVWSIM_WG_OUTS_128


// ---- mbarriers and the bulk copy ---------------------------------------------------------
// A stage's weight block arrives by one bulk copy whose completion is counted in bytes on
// an mbarrier: thread 0 arrives with the expected byte count, the copy engine completes
// the transaction, and the phase flips when both have happened.
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count)
                 : "memory");
}

__device__ __forceinline__ void mbarrier_init_fence() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

__device__ __forceinline__ void mbarrier_expect_bytes(uint64_t* bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(
                     smem_addr(bar)),
                 "r"(bytes)
                 : "memory");
}

__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
    uint32_t done = 0;
    do {
        asm volatile(
            "{\n.reg .pred p;\n"
            "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
            "selp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(smem_addr(bar)), "r"(parity)
            : "memory");
    } while (!done);
}

// `bytes` (a multiple of 16) from global to shared memory by the bulk-copy engine (the
// TMA unit without a tensor map: one contiguous block), completing on `bar`.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes,
                                          uint64_t* bar) {
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, "
        "[%3];\n" ::"r"(smem_addr(dst)),
        "l"(src), "r"(bytes), "r"(smem_addr(bar))
        : "memory");
}

// ---- the activation tile (B), N-major, 128-byte swizzle ---------------------------------
// common.cuh's issue_activation_rows (zero rows for xt_row < 0, zero tokens past m8)
// with this layout's placement: chunk c (8 tokens) of stage row r in column block c / 8,
// row r, chunk (c % 8) ^ (r % 8).
struct NMajorAtoms {
    __device__ __forceinline__ static uint32_t offset(int r, int c) {
        return (c / 8) * Layout<false>::kBBlockBytes + r * kSwizzleRowBytes +
               16 * swizzled_chunk(r, c % 8);
    }
};

// ---- the CTA main loop ------------------------------------------------------------------
// Loader interface (PlainLoader, GatherLoader below; as in common.cuh):
//   weight_block(step): the global address of stage `step`'s K-blocked weight block
//                       (Layout::kWeightBytes, one bulk copy);
//   prefetch(step):     fill next_row[] with the XT rows of stage `step` (tw/tvw read
//                       their kept-K list here, one stage ahead of the copies);
//   xt, m8, tok0, next_row[CopyPlan::kIters]: the activation side.
//
// Barriers (2 x STAGES mbarriers): full[s] completes when buffer s holds its stage (the
// weight's bulk copy counts its bytes; with a producer, also one arrival per producer
// thread after its cp.async writes landed); empty[s] (producer only) completes when every
// consumer warp's wgmma no longer reads buffer s.
static_assert(STAGES >= 3, "one buffer computing, one finishing, at least one loading");

__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}

// The threads that run the epilogue synchronise: the whole CTA, or only the consumers
// once the producer has left (named barrier 1).
__device__ __forceinline__ void consumer_sync() {
    if constexpr (kProducerWarps > 0) {
        asm volatile("bar.sync 1, %0;\n" ::"n"(kConsumerThreads) : "memory");
    } else {
        __syncthreads();
    }
}

// One stage's wgmma batch for this thread's warpgroup, committed; `first` (the task's
// first stage) runs its first K step with scale-d = 0 instead of zeroed accumulators:
// registers a non-wgmma instruction writes inside the loop would make ptxas serialise
// the wgmma pipeline.
template <bool SPARSE>
__device__ __forceinline__ void compute_stage(const char* stage, bool first,
                                              float (&acc)[BN / 2]) {
    using L = Layout<SPARSE>;
    const uint32_t a = smem_addr(stage) + (threadIdx.x / 128) * 64 * L::kARowBytes;
    const uint32_t b = smem_addr(stage + L::kWeightBytes);
    fence();
#pragma unroll
    for (int ks = 0; ks < BK / L::kKPerMma; ++ks) {
        const uint64_t da = descriptor(a + ks * L::kAStepBytes, 16, L::kASbo, L::kASwizzle);
        const uint64_t db = descriptor(b + ks * L::kBStepBytes, L::kBLbo, L::kBSbo,
                                       kSwizzle128B);
        const int scale_d = !first || ks > 0;
        if constexpr (SPARSE) {
            // This warp's 16 rows: one lane-ordered metadata word per thread covers 64
            // logical K, selector 0 for the first k32 and 1 for the second, as for mma.sp
            // (the PTX ISA draws wgmma.sp's metadata with mma.sp's figure).
            const uint32_t e = reinterpret_cast<const uint32_t*>(
                stage + L::kABytes)[(threadIdx.x / 32) * 32 + threadIdx.x % 32];
            if (ks % 2 == 0)
                Wgmma<BN>::template sparse<0>(acc, da, db, e, scale_d);
            else
                Wgmma<BN>::template sparse<1>(acc, da, db, e, scale_d);
        } else {
            Wgmma<BN>::dense(acc, da, db, scale_d);
        }
    }
    commit();
}

// Start stage `step`'s copies into its buffer: the weight block by one bulk copy (issued
// by `leader`), the activation rows by this thread's cp.async (one commit group).
template <bool SPARSE, class Loader>
__device__ __forceinline__ void issue_stage(Loader& loader, int step, char* smem,
                                            uint64_t* full, bool leader) {
    using L = Layout<SPARSE>;
    const int buf = step % STAGES;
    char* stage = smem + buf * L::kStageBytes;
    if (leader) {
        mbarrier_expect_bytes(&full[buf], L::kWeightBytes);
        bulk_copy(stage, loader.weight_block(step), L::kWeightBytes, &full[buf]);
    }
    tvw::issue_activation_rows<NMajorAtoms, CopyPlan>(smem_addr(stage + L::kWeightBytes),
                                                      loader.xt, loader.m8, loader.tok0,
                                                      loader.next_row);
    cp_async_commit();
}

// Without a producer, every thread loads and computes (pipeline_events in
// kernels/wgmma.py is this loop's program order):
//   prologue  issue stages 0 .. STAGES-3
//   iter it   wait until stage it landed (this thread's cp.async group, then full[it]),
//             fence the cp.async writes into the async proxy the tensor core reads
//             through, __syncthreads; issue stage it + STAGES - 2 into the buffer of stage
//             it - 2 (every warpgroup finished reading it: wait_group 1 at the end of
//             iteration it - 1); this stage's wgmma batch, then wait until at most it runs.
template <bool SPARSE, class Loader>
__device__ __forceinline__ void shared_loop(Loader& loader, int k_steps, char* smem,
                                            uint64_t* full, float (&acc)[BN / 2]) {
    using L = Layout<SPARSE>;
    const bool leader = threadIdx.x == 0;
#pragma unroll
    for (int s = 0; s < STAGES - 2; ++s) {
        if (s < k_steps) {
            loader.prefetch(s);
            issue_stage<SPARSE>(loader, s, smem, full, leader);
        } else {
            cp_async_commit();  // one group per stage keeps the wait count fixed
        }
    }
    if (STAGES - 2 < k_steps) loader.prefetch(STAGES - 2);
    for (int it = 0; it < k_steps; ++it) {
        const int buf = it % STAGES;
        cp_async_wait<STAGES - 3>();
        fence_proxy_async();
        mbarrier_wait(&full[buf], (it / STAGES) & 1);
        __syncthreads();
        const int next = it + STAGES - 2;
        if (next < k_steps) {
            issue_stage<SPARSE>(loader, next, smem, full, leader);
            if (next + 1 < k_steps) loader.prefetch(next + 1);
        } else {
            cp_async_commit();
        }
        compute_stage<SPARSE>(smem + buf * L::kStageBytes, it == 0, acc);
        wait<1>();
    }
    wait<0>();
}

// The producer warpgroup: stage `step` into buffer step % STAGES once every consumer warp
// released that buffer (empty), the bulk copy by its first thread, the rows by all 128;
// each thread arrives on full[step] when its copies of that stage landed - one stage
// later, so two stages' copies are in flight - after fencing them into the async proxy.
template <bool SPARSE, class Loader>
__device__ __forceinline__ void produce(Loader& loader, int k_steps, char* smem,
                                        uint64_t* full, uint64_t* empty) {
    const bool leader = threadIdx.x == kConsumerThreads;
    if (k_steps > 0) loader.prefetch(0);
    for (int step = 0; step < k_steps; ++step) {
        if (step >= STAGES) mbarrier_wait(&empty[step % STAGES], (step / STAGES - 1) & 1);
        issue_stage<SPARSE>(loader, step, smem, full, leader);
        if (step + 1 < k_steps) loader.prefetch(step + 1);
        if (step >= 1) {
            cp_async_wait<1>();
            fence_proxy_async();
            mbarrier_arrive(&full[(step - 1) % STAGES]);
        }
    }
    if (k_steps > 0) {
        cp_async_wait<0>();
        fence_proxy_async();
        mbarrier_arrive(&full[(k_steps - 1) % STAGES]);
    }
}

// The consumer warpgroups: wait for full[it], run the stage's wgmma batch, and once the
// previous stage's batch retired (wait_group 1) release its buffer (one arrival a warp).
template <bool SPARSE>
__device__ __forceinline__ void consume(int k_steps, char* smem, uint64_t* full,
                                        uint64_t* empty, float (&acc)[BN / 2]) {
    using L = Layout<SPARSE>;
    for (int it = 0; it < k_steps; ++it) {
        mbarrier_wait(&full[it % STAGES], (it / STAGES) & 1);
        compute_stage<SPARSE>(smem + (it % STAGES) * L::kStageBytes, it == 0, acc);
        wait<1>();
        if (it >= 1 && threadIdx.x % 32 == 0) mbarrier_arrive(&empty[(it - 1) % STAGES]);
    }
    wait<0>();
}

// The task's K loop. Returns false for the producer's threads, which have nothing more
// to do; the consumers (or, without a producer, every thread) go on to the epilogue with
// `acc` complete and the pipeline's buffers free.
template <bool SPARSE, class Loader>
__device__ __forceinline__ bool mainloop(Loader& loader, int k_steps, char* smem,
                                         uint64_t (&bars)[2 * STAGES], float (&acc)[BN / 2]) {
    uint64_t* full = bars;
    uint64_t* empty = bars + STAGES;
    if (threadIdx.x == 0) {
        const uint32_t full_count = kProducerWarps > 0 ? 32 * kProducerWarps + 1 : 1;
#pragma unroll
        for (int s = 0; s < STAGES; ++s) {
            mbarrier_init(&full[s], full_count);
            mbarrier_init(&empty[s], WARPS);
        }
        mbarrier_init_fence();
    }
    __syncthreads();  // the last barrier every thread of the CTA passes
    if constexpr (kProducerWarps > 0) {
        if (threadIdx.x >= kConsumerThreads) {
            asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kProducerRegisters));
            produce<SPARSE>(loader, k_steps, smem, full, empty);
            return false;
        }
        asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kConsumerRegisters));
        consume<SPARSE>(k_steps, smem, full, empty, acc);
    } else {
        shared_loop<SPARSE>(loader, k_steps, smem, full, acc);
    }
    if (k_steps == 0) {  // (no schedule makes such a task; stay defined anyway)
#pragma unroll
        for (int v = 0; v < BN / 2; ++v) acc[v] = 0.0f;
    }
    cp_async_wait<0>();
    consumer_sync();  // the epilogue reuses the pipeline's buffers
    return true;
}

// ---- loaders ------------------------------------------------------------------------------
// What every loader holds: the task's first K-blocked weight block (stage s is block
// s after it), the activation side, and the XT rows of the next stage to issue.
template <bool SPARSE>
struct StageSource {
    const char* w_task;
    const __half* xt;
    int m8, tok0, k_begin;
    int next_row[CopyPlan::kIters];

    __device__ __forceinline__ const char* weight_block(int step) const {
        return w_task + static_cast<int64_t>(step) * Layout<SPARSE>::kWeightBytes;
    }
};

// Consecutive K (dense, vw): stage s reads XT rows k_begin + s * BK ..; rows at or past K
// (the zero-padded k_pad) read as zeros.
template <bool SPARSE>
struct PlainLoader : StageSource<SPARSE> {
    int K;

    __device__ __forceinline__ void prefetch(int step) {
        const int k0 = this->k_begin + step * BK;
#pragma unroll
        for (int i = 0; i < CopyPlan::kIters; ++i) {
            const int k = k0 + CopyPlan::row(i);
            this->next_row[i] = k < K ? k : -1;
        }
    }
};

// A kept-K list (tw, tvw): stage row kk is XT row tile_k_index[k_begin + s * BK + kk]
// (-1: a zero row), read one stage ahead of its copies.
template <bool SPARSE>
struct GatherLoader : StageSource<SPARSE> {
    const int* tile_k_index;

    __device__ __forceinline__ void prefetch(int step) {
        const int k0 = this->k_begin + step * BK;
#pragma unroll
        for (int i = 0; i < CopyPlan::kIters; ++i)
            this->next_row[i] =
                CopyPlan::active(i) ? __ldg(tile_k_index + k0 + CopyPlan::row(i)) : -1;
    }
};

// The first weight block of a task: a row tile's blocks are consecutive, from block
// `tile_first_block` (dense, vw: tile * k_len / BK; tw, tvw: k_ptr[tile] / BK).
template <bool SPARSE>
__device__ __forceinline__ const char* task_weight(const void* blocked,
                                                   int64_t tile_first_block, int k_begin) {
    return reinterpret_cast<const char*>(blocked) +
           (tile_first_block + k_begin / BK) * Layout<SPARSE>::kWeightBytes;
}

// ---- accumulator ownership --------------------------------------------------------------
// Register v of thread `tid` (0..127 in its warpgroup) holds D row
//   16 (tid / 32) + (tid % 32) / 4 + 8 ((v / 2) % 2),  column 8 (v / 4) + 2 (tid % 4) + v % 2
// (PTX ISA, "Matrix Fragments for wgmma.mma_async.m64nNk16", accumulator D): each warp
// owns 16 rows, and inside them the registers follow the mma.sync m16n8 C layout, one
// n8 column block after the other.

// The epilogue: a whole-K task stages the warpgroups' tile as fp16 in shared memory
// (reusing the pipeline's buffers) and stores whole rows (common.cuh's store_staged_rows);
// a split task adds its fp32 partial sums into the workspace.
template <class RowMap>
__device__ __forceinline__ void epilogue(const float (&d)[BN / 2], char* smem,
                                         const RowMap& row_of, bool split, int tok0, int m8,
                                         __half* __restrict__ yt, float* __restrict__ ws) {
    const int tid = threadIdx.x;
    const int row_base = 64 * (tid / 128) + 16 * ((tid / 32) % 4) + (tid % 32) / 4;
    const int col_base = 2 * (tid % 4);
    if (split) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int out = row_of(row_base + 8 * h);
            if (out < 0) continue;
            float* dst = ws + static_cast<int64_t>(out) * m8;
#pragma unroll
            for (int j = 0; j < BN / 8; ++j) {
                const int tok = tok0 + 8 * j + col_base;
                if (tok < m8) {  // m8 is even, so tok + 1 < m8 too
                    red_add_f32(dst + tok, d[4 * j + 2 * h]);
                    red_add_f32(dst + tok + 1, d[4 * j + 2 * h + 1]);
                }
            }
        }
        return;
    }
    __half2* tile = reinterpret_cast<__half2*>(smem);
    constexpr int kStride2 = StageLayout<false>::kEpilogueStride / 2;  // in half2
#pragma unroll
    for (int j = 0; j < BN / 8; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h)
            tile[(row_base + 8 * h) * kStride2 + (8 * j + col_base) / 2] =
                __floats2half2_rn(d[4 * j + 2 * h], d[4 * j + 2 * h + 1]);
    consumer_sync();
    store_staged_rows<false>(smem, row_of, tok0, m8, yt);
}

// ---- the kernels' bodies ------------------------------------------------------------------
// Consecutive K (dense, vw): row tile t's weight blocks start at t * k_len / BK, output
// row r of the tile is t * BM + r while < n.
template <bool SPARSE>
__device__ __forceinline__ void plain_task(const int4* __restrict__ tasks, const void* blocked,
                                          int n, int k_len, const __half* __restrict__ xt,
                                          int K, int m8, __half* __restrict__ yt,
                                          float* __restrict__ ws, char* smem,
                                          uint64_t (&bars)[2 * STAGES]) {
    const int4 task = tasks[blockIdx.x];
    const int tile = task.x, block = task.y, k_begin = task.z, k_end = task.w;
    const char* w_task =
        task_weight<SPARSE>(blocked, static_cast<int64_t>(tile) * (k_len / BK), k_begin);
    PlainLoader<SPARSE> loader{{w_task, xt, m8, block * BN, k_begin, {}}, K};
    float acc[BN / 2];
    if (!mainloop<SPARSE>(loader, (k_end - k_begin) / BK, smem, bars, acc)) return;
    const bool split = !(k_begin == 0 && k_end == k_len);
    const int row0 = tile * BM;
    auto row_of = [&](int r) { return row0 + r < n ? row0 + r : -1; };
    epilogue(acc, smem, row_of, split, block * BN, m8, yt, ws);
}

// A kept-K list per tile (tw, tvw): tile t's weight blocks start at k_ptr[t] / BK, its
// activation rows are gathered through k_index, its output rows come from row_map.
template <bool SPARSE>
__device__ __forceinline__ void gather_task(const int4* __restrict__ tasks, const void* blocked,
                                           const int* __restrict__ row_map,
                                           const int* __restrict__ k_ptr,
                                           const int* __restrict__ k_index,
                                           const __half* __restrict__ xt, int m8,
                                           __half* __restrict__ yt, float* __restrict__ ws,
                                           char* smem, uint64_t (&bars)[2 * STAGES]) {
    const int4 task = tasks[blockIdx.x];
    const int tile = task.x, block = task.y, k_begin = task.z, k_end = task.w;
    const int kp = k_ptr[tile];
    const int kt = k_ptr[tile + 1] - kp;
    const char* w_task = task_weight<SPARSE>(blocked, kp / BK, k_begin);
    GatherLoader<SPARSE> loader{{w_task, xt, m8, block * BN, k_begin, {}}, k_index + kp};
    float acc[BN / 2];
    if (!mainloop<SPARSE>(loader, (k_end - k_begin) / BK, smem, bars, acc)) return;
    const bool split = !(k_begin == 0 && k_end == kt);
    const int* tile_rows = row_map + static_cast<int64_t>(tile) * BM;
    auto row_of = [&](int r) { return __ldg(tile_rows + r); };
    epilogue(acc, smem, row_of, split, block * BN, m8, yt, ws);
}

}  // namespace wg
}  // namespace tvw
