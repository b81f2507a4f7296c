// wgmma_probe.cu - one warpgroup, one instruction: pins wgmma's layouts on silicon.
//
// The sibling of mma_sp_probe.cu for Hopper. The host hands over the exact shared-memory
// bytes of one stage (kernels/wgmma.py writes them as the sm_90a kernels do), the
// descriptor fields the kernels use, the accumulators and - for wgmma.sp - every
// thread's metadata register. The warpgroup copies the bytes into shared memory verbatim,
// runs exactly one wgmma (or wgmma.sp) with descriptors built by the kernels' own
// tvw::wg::descriptor, and writes every thread's D registers back. Compared with
// kernels/wgmma.py register for register, one run settles the descriptor fields, the
// swizzle modes, the accumulator ownership and the wgmma.sp metadata layout at once.
//
// Shapes are the kernels': m64n256k16 (dense) and m64n256k32 (2:4), so D is [128][128].

#include "wgmma.cuh"

namespace {

constexpr int kProbeThreads = 128;
constexpr int kProbeN = 256;

// image: `image_bytes` (a multiple of 16) copied to shared memory offset 0 (1 KiB-aligned).
__device__ __forceinline__ void load_image(char* smem, const int4* __restrict__ image,
                                           int image_bytes) {
    for (int i = threadIdx.x; i < image_bytes / 16; i += kProbeThreads)
        reinterpret_cast<int4*>(smem)[i] = image[i];
    // Generic-proxy stores, read next by the tensor core through the async proxy.
    tvw::wg::fence_proxy_async();
    __syncthreads();
}

// Every thread's accumulators in from c / out to d, [128 threads][128] fp32.
__device__ __forceinline__ void load_acc(float (&acc)[kProbeN / 2], const float* __restrict__ c) {
#pragma unroll
    for (int v = 0; v < kProbeN / 2; ++v) acc[v] = c[threadIdx.x * (kProbeN / 2) + v];
}

__device__ __forceinline__ void store_acc(const float (&acc)[kProbeN / 2], float* __restrict__ d) {
#pragma unroll
    for (int v = 0; v < kProbeN / 2; ++v) d[threadIdx.x * (kProbeN / 2) + v] = acc[v];
}

}  // namespace

// Descriptor fields: a = (a_offset, LBO 16, a_sbo, a_swizzle), b = (b_offset, b_lbo, b_sbo,
// 128-byte swizzle), offsets in bytes from the image's start; swizzle codes as in the
// descriptor (1 = 128-byte, 2 = 64-byte). c, d: [128 threads][128] fp32.
extern "C" __global__ void __launch_bounds__(kProbeThreads)
    wgmma_probe(const int4* __restrict__ image, int image_bytes, int a_offset, int a_sbo,
                int a_swizzle, int b_offset, int b_lbo, int b_sbo, const float* __restrict__ c,
                float* __restrict__ d) {
    extern __shared__ __align__(1024) char smem[];
    load_image(smem, image, image_bytes);
    float acc[kProbeN / 2];
    load_acc(acc, c);
    const uint32_t base = tvw::smem_addr(smem);
    tvw::wg::fence();
    tvw::wg::Wgmma<kProbeN>::dense(
        acc, tvw::wg::descriptor(base + a_offset, 16, a_sbo, a_swizzle),
        tvw::wg::descriptor(base + b_offset, b_lbo, b_sbo, tvw::wg::kSwizzle128B), 1);
    tvw::wg::commit();
    tvw::wg::wait<0>();
    store_acc(acc, d);
}

// The 2:4 counterpart: A is 64 x 16 stored values of a 64 x 32 matrix, `e` one metadata
// word per thread, `selector` 0 or 1 (uniform: the instruction takes an immediate).
extern "C" __global__ void __launch_bounds__(kProbeThreads)
    wgmma_sp_probe(const int4* __restrict__ image, int image_bytes, int a_offset, int a_sbo,
                   int a_swizzle, int b_offset, int b_lbo, int b_sbo,
                   const float* __restrict__ c, const uint32_t* __restrict__ e, int selector,
                   float* __restrict__ d) {
    extern __shared__ __align__(1024) char smem[];
    load_image(smem, image, image_bytes);
    float acc[kProbeN / 2];
    load_acc(acc, c);
    const uint32_t ev = e[threadIdx.x];
    const uint32_t base = tvw::smem_addr(smem);
    const uint64_t da = tvw::wg::descriptor(base + a_offset, 16, a_sbo, a_swizzle);
    const uint64_t db = tvw::wg::descriptor(base + b_offset, b_lbo, b_sbo, tvw::wg::kSwizzle128B);
    tvw::wg::fence();
    if (selector == 0)
        tvw::wg::Wgmma<kProbeN>::sparse<0>(acc, da, db, ev, 1);
    else
        tvw::wg::Wgmma<kProbeN>::sparse<1>(acc, da, db, ev, 1);
    tvw::wg::commit();
    tvw::wg::wait<0>();
    store_acc(acc, d);
}
