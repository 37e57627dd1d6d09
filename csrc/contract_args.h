// Argument checks of torch.ops.simattr.contract_tangent, shared by its CPU (csrc/cpu/contract.cpp) and CUDA
// (csrc/cuda/contract_op.cpp) implementations.
#pragma once

#include <torch/extension.h>

namespace simattr_contract {

// Checks shapes and dtypes; returns the accumulation dtype (float64 for float64 grads, else float32).
inline at::ScalarType check_args(const at::Tensor& grads, const at::Tensor& tangent,
                                 const c10::optional<at::Tensor>& weights, const at::Tensor& unit_index,
                                 int64_t n_units) {
  TORCH_CHECK(grads.dim() == 4, "contract_tangent: grads must be [K, N, S, H]");
  TORCH_CHECK(tangent.dim() == 2 && tangent.size(0) == grads.size(2) && tangent.size(1) == grads.size(3),
              "contract_tangent: tangent must be [S, H] with the grads' S and H");
  TORCH_CHECK(unit_index.dim() == 1 && unit_index.size(0) == grads.size(2),
              "contract_tangent: unit_index must be [S]");
  TORCH_CHECK(!weights.has_value() || (weights->dim() == 1 && weights->size(0) == grads.size(1)),
              "contract_tangent: weights must be [N]");
  TORCH_CHECK(n_units >= 0, "contract_tangent: n_units must be >= 0");
  const auto st = grads.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf,
              "contract_tangent: grads must be float32, float64, bfloat16 or float16");
  return st == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace simattr_contract
