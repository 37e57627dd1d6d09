// CUDA implementation of torch.ops.simattr.contract_tangent (defined, with its CPU implementation, in
// csrc/cpu/contract.cpp): argument checks and dtype handling here, the kernel in csrc/cuda/contract.cu.
// Compiled only in CUDA builds (SIMATTR_BUILD_CUDA=1 with a CUDA torch).
#include <torch/extension.h>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../contract_args.h"
#include "contract.h"

namespace {

at::Tensor contract_tangent_cuda(const at::Tensor& grads_, const at::Tensor& tangent_,
                                 const c10::optional<at::Tensor>& weights_, const at::Tensor& unit_index_,
                                 int64_t n_units) {
  const auto acc_t = simattr_contract::check_args(grads_, tangent_, weights_, unit_index_, n_units);
  TORCH_CHECK(grads_.is_cuda(), "contract_tangent: the CUDA kernel takes CUDA tensors");
  const c10::cuda::CUDAGuard guard(grads_.device());
  const int64_t K = grads_.size(0), N = grads_.size(1), S = grads_.size(2), H = grads_.size(3);
  const auto st = grads_.scalar_type();
  const auto type = st == at::kFloat ? simattr_cuda::GradType::kFloat32
                    : st == at::kDouble ? simattr_cuda::GradType::kFloat64
                    : st == at::kBFloat16 ? simattr_cuda::GradType::kBFloat16
                                          : simattr_cuda::GradType::kFloat16;
  auto grads = grads_.contiguous();
  auto tangent = tangent_.to(grads.device(), acc_t).contiguous();
  auto weights = weights_.has_value() ? weights_->to(grads.device(), acc_t).contiguous()
                                      : at::ones({N}, grads.options().dtype(acc_t));
  auto uidx = unit_index_.to(grads.device(), at::kLong).contiguous();
  if (S > 0) {  // one host sync for both bounds
    const auto bounds = at::stack({uidx.min(), uidx.max()}).cpu();
    const int64_t* b = bounds.data_ptr<int64_t>();
    TORCH_CHECK(b[0] >= -1 && b[1] < n_units, "contract_tangent: unit_index out of range");
  }
  auto out = at::zeros({K, n_units}, grads.options().dtype(acc_t));
  if (K == 0 || N == 0 || S == 0 || n_units == 0) return out;
  C10_CUDA_CHECK(simattr_cuda::contract_tangent_launch(type, grads.data_ptr(), tangent.data_ptr(), weights.data_ptr(),
                                                       uidx.data_ptr<int64_t>(), out.data_ptr(), K, N, S, H, n_units,
                                                       c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(simattr, CUDA, m) { m.impl("contract_tangent", &contract_tangent_cuda); }
