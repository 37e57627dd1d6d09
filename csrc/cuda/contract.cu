// Reverse-mode Jacobian contraction on CUDA (the kernel; the torch operator around it is csrc/cuda/contract_op.cpp):
//
//   out[k, uidx[s]] += Σ_n w[n] Σ_h grads[k, n, s, h] · tangent[s, h]     (tokens with uidx -1 skipped)
//
// It covers what the Triton kernel (kernels/contract.py) does not: CUDA machines without Triton (an optional
// dependency) and builds that want no JIT step. One warp per (k, s) row: the 32 lanes stride over H (coalesced
// reads of one grads row), loop over the N nodes, reduce with warp shuffles, and lane 0 adds the row's sum into its
// unit with one atomicAdd. grads are read exactly once; accumulation in float (double for double grads).
// No torch headers here: this file compiles with nvcc alone.
#include "contract.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace {

constexpr int kWarpsPerBlock = 8;

template <typename T, typename Acc>
__device__ __forceinline__ Acc load_acc(const T* p) { return static_cast<Acc>(*p); }
template <>
__device__ __forceinline__ float load_acc<__nv_bfloat16, float>(const __nv_bfloat16* p) { return __bfloat162float(*p); }
template <>
__device__ __forceinline__ float load_acc<__half, float>(const __half* p) { return __half2float(*p); }

template <typename T, typename Acc>
__global__ void contract_kernel(const T* __restrict__ g, const Acc* __restrict__ t, const Acc* __restrict__ w,
                                const int64_t* __restrict__ uidx, Acc* __restrict__ out, int64_t K, int64_t N,
                                int64_t S, int64_t H, int64_t U) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= K * S) return;  // whole warps leave together: row is uniform across a warp
  const int64_t k = row / S, s = row % S;
  const int64_t unit = uidx[s];
  if (unit < 0) return;
  const Acc* trow = t + s * H;
  Acc acc = 0;
  for (int64_t n = 0; n < N; ++n) {
    const T* grow = g + ((k * N + n) * S + s) * H;
    Acc part = 0;
    for (int64_t h = lane; h < H; h += 32) part += load_acc<T, Acc>(grow + h) * trow[h];
    acc += w[n] * part;
  }
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
  if (lane == 0) atomicAdd(out + k * U + unit, acc);
}

template <typename T, typename Acc>
cudaError_t launch(const void* g, const void* t, const void* w, const int64_t* uidx, void* out, int64_t K, int64_t N,
                   int64_t S, int64_t H, int64_t U, cudaStream_t stream) {
  const int64_t blocks = (K * S + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks == 0) return cudaSuccess;
  if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  contract_kernel<T, Acc><<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, 0, stream>>>(
      static_cast<const T*>(g), static_cast<const Acc*>(t), static_cast<const Acc*>(w), uidx, static_cast<Acc*>(out),
      K, N, S, H, U);
  return cudaGetLastError();
}

}  // namespace

namespace simattr_cuda {

cudaError_t contract_tangent_launch(GradType type, const void* g, const void* t, const void* w, const int64_t* uidx,
                                    void* out, int64_t K, int64_t N, int64_t S, int64_t H, int64_t U,
                                    cudaStream_t stream) {
  switch (type) {
    case GradType::kFloat64: return launch<double, double>(g, t, w, uidx, out, K, N, S, H, U, stream);
    case GradType::kFloat32: return launch<float, float>(g, t, w, uidx, out, K, N, S, H, U, stream);
    case GradType::kBFloat16: return launch<__nv_bfloat16, float>(g, t, w, uidx, out, K, N, S, H, U, stream);
    case GradType::kFloat16: return launch<__half, float>(g, t, w, uidx, out, K, N, S, H, U, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace simattr_cuda
