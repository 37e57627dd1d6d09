// Launcher of the CUDA Jacobian contraction (csrc/cuda/contract.cu), free of torch headers so that the kernel file
// compiles with nvcc alone (tests/test_kernels_contract.py does that wherever nvcc exists). The torch operator
// around it is csrc/cuda/contract_op.cpp.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace simattr_cuda {

enum class GradType { kFloat32, kFloat64, kBFloat16, kFloat16 };

// out[k, uidx[s]] += Σ_n w[n] Σ_h g[k, n, s, h] · t[s, h] for contiguous g [K, N, S, H] of type `type`;
// t [S, H], w [N] and out [K, U] are double for kFloat64 grads and float otherwise; uidx[s] = -1 skips token s.
cudaError_t contract_tangent_launch(GradType type, const void* g, const void* t, const void* w, const int64_t* uidx,
                                    void* out, int64_t K, int64_t N, int64_t S, int64_t H, int64_t U,
                                    cudaStream_t stream);

}  // namespace simattr_cuda
