// CUDA implementation of torch.ops.simattr.contract_tangent (defined, with its CPU implementation, in
// csrc/cpu/contract.cpp): argument checks and dtype handling here, the kernel in csrc/cuda/contract.cu.
// Compiled only in CUDA builds (SIMATTR_BUILD_CUDA=1 with a CUDA torch).
#include <torch/extension.h>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "contract.h"

namespace {

at::Tensor contract_tangent_cuda(const at::Tensor& grads_, const at::Tensor& tangent_,
                                 const c10::optional<at::Tensor>& weights_, const at::Tensor& unit_index_,
                                 int64_t n_units) {
  TORCH_CHECK(grads_.dim() == 4, "contract_tangent: grads must be [K, N, S, H]");
  TORCH_CHECK(tangent_.dim() == 2 && tangent_.size(0) == grads_.size(2) && tangent_.size(1) == grads_.size(3),
              "contract_tangent: tangent must be [S, H] with the grads' S and H");
  TORCH_CHECK(unit_index_.dim() == 1 && unit_index_.size(0) == grads_.size(2),
              "contract_tangent: unit_index must be [S]");
  TORCH_CHECK(grads_.is_cuda(), "contract_tangent: the CUDA kernel takes CUDA tensors");
  TORCH_CHECK(n_units >= 0, "contract_tangent: n_units must be >= 0");
  const c10::cuda::CUDAGuard guard(grads_.device());
  const int64_t K = grads_.size(0), N = grads_.size(1), S = grads_.size(2), H = grads_.size(3);
  const auto st = grads_.scalar_type();
  simattr_cuda::GradType type;
  switch (st) {
    case at::kFloat: type = simattr_cuda::GradType::kFloat32; break;
    case at::kDouble: type = simattr_cuda::GradType::kFloat64; break;
    case at::kBFloat16: type = simattr_cuda::GradType::kBFloat16; break;
    case at::kHalf: type = simattr_cuda::GradType::kFloat16; break;
    default: TORCH_CHECK(false, "contract_tangent: grads must be float32, float64, bfloat16 or float16");
  }
  const auto acc_t = st == at::kDouble ? at::kDouble : at::kFloat;
  auto grads = grads_.contiguous();
  auto tangent = tangent_.to(grads.device(), acc_t).contiguous();
  auto weights = weights_.has_value() ? weights_->to(grads.device(), acc_t).contiguous()
                                      : at::ones({N}, grads.options().dtype(acc_t));
  TORCH_CHECK(weights.dim() == 1 && weights.size(0) == N, "contract_tangent: weights must be [N]");
  auto uidx = unit_index_.to(grads.device(), at::kLong).contiguous();
  TORCH_CHECK(S == 0 || (uidx.min().item<int64_t>() >= -1 && uidx.max().item<int64_t>() < n_units),
              "contract_tangent: unit_index out of range");
  auto out = at::zeros({K, n_units}, grads.options().dtype(acc_t));
  if (K == 0 || N == 0 || S == 0 || n_units == 0) return out;
  C10_CUDA_CHECK(simattr_cuda::contract_tangent_launch(type, grads.data_ptr(), tangent.data_ptr(), weights.data_ptr(),
                                                       uidx.data_ptr<int64_t>(), out.data_ptr(), K, N, S, H, n_units,
                                                       c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(simattr, CUDA, m) { m.impl("contract_tangent", &contract_tangent_cuda); }
