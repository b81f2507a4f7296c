// mma_sp_probe.cu - one warp, one instruction: pins the fragment and metadata layouts.
//
// The PTX ISA describes which lane holds which element of each mma operand; the encoder
// (kernels/formats.py) and the numpy emulation (kernels/mma_sp.py) are written from that
// description. These kernels let a test hand every lane its registers straight from
// global memory, execute exactly one mma, and read back every lane's D registers, so
// silicon can be compared with the emulation register by register - with no shared
// memory, ldmatrix or pipeline in between to blur where a mistake comes from.
//
// Register arrays are [32 lanes][4] (row-major), as in kernels/mma_sp.py.

#include "common.cuh"

// D = A (2:4, compressed 16x16) * B (32x8) + C with lane-supplied metadata `e` and the
// selector chosen at run time (two instantiations: the selector is an immediate).
extern "C" __global__ void __launch_bounds__(32)
    mma_sp_probe(const uint32_t* __restrict__ a, const uint32_t* __restrict__ b,
                 const float* __restrict__ c, const uint32_t* __restrict__ e, int selector,
                 float* __restrict__ d) {
    const int lane = threadIdx.x & 31;
    uint32_t ar[4], br[4];
    float acc[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        ar[i] = a[lane * 4 + i];
        br[i] = b[lane * 4 + i];
        acc[i] = c[lane * 4 + i];
    }
    const uint32_t ev = e[lane];
    // `selector` is a kernel argument, so this branch is uniform across the warp, as
    // mma.sp's .aligned requires.
    if (selector == 0)
        tvw::mma_sp_m16n8k32<0>(acc, ar, br, ev);
    else
        tvw::mma_sp_m16n8k32<1>(acc, ar, br, ev);
#pragma unroll
    for (int i = 0; i < 4; ++i) d[lane * 4 + i] = acc[i];
}

// The dense m16n8k16 counterpart: a [32][4], b [32][2], c and d [32][4].
extern "C" __global__ void __launch_bounds__(32)
    mma_probe(const uint32_t* __restrict__ a, const uint32_t* __restrict__ b,
              const float* __restrict__ c, float* __restrict__ d) {
    const int lane = threadIdx.x & 31;
    uint32_t ar[4];
    float acc[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        ar[i] = a[lane * 4 + i];
        acc[i] = c[lane * 4 + i];
    }
    tvw::mma_m16n8k16(acc, ar, b[lane * 2], b[lane * 2 + 1]);
#pragma unroll
    for (int i = 0; i < 4; ++i) d[lane * 4 + i] = acc[i];
}
