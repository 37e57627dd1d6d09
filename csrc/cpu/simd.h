// Portable SIMD helpers shared by the CPU kernels: GCC function multiversioning and 8-wide float vectors.
#pragma once

// SIMATTR_CLONES: compile a function for AVX-512, AVX2+FMA and baseline x86-64; the loader picks the best.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(SIMATTR_NO_MULTIVERSION)
#define SIMATTR_CLONES __attribute__((target_clones("avx512f", "avx2,fma", "default")))
#else
#define SIMATTR_CLONES
#endif

namespace simattr_simd {
// 8 floats (one AVX2 register; a pair of SSE registers in the baseline clone), and its unaligned-load view.
typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));
}  // namespace simattr_simd
