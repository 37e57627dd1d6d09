// Reverse-mode Jacobian contraction on the CPU:
//   torch.ops.simattr.contract_tangent(grads, tangent, weights, unit_index, n_units) -> out [K, n_units]
//
//   out[k, unit_index[s]] += Σ_n w[n] Σ_h grads[k, n, s, h] · tangent[s, h]     (tokens with unit_index -1 skipped)
//
// grads [K, N, S, H] are the vmapped VJPs of one chunk of cotangents (K) at one chunk of path nodes (N); the result
// is that chunk's contribution to G (one-hot cotangents) or to the token matrix itself (cross mode), already pooled
// into attribution units. The PyTorch reference is simattr.contraction.contract_torch; this kernel reads `grads`
// once, in memory order (no permuted copy, which the einsum path makes), and never stores the [K, S] token block.
//
// float32 grads: explicit 8-wide vector accumulators (the compiler does not reassociate a float reduction by itself),
// GCC function multiversioning for AVX-512 / AVX2 / baseline. float64, bfloat16 and float16 grads: a scalar loop
// with four partial sums; float64 accumulates in double, the others in float. OpenMP over (k, s) rows.
#include <torch/extension.h>

#include "../contract_args.h"
#include "simd.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using simattr_simd::v8;
using simattr_simd::v8u;

// Σ_h a[h] b[h] for float32 rows: two 8-wide accumulators, then the tail.
SIMATTR_CLONES
float dot_f32(const float* __restrict__ a, const float* __restrict__ b, int64_t H) {
  v8 acc0 = {}, acc1 = {};
  int64_t h = 0;
  for (; h + 16 <= H; h += 16) {
    acc0 += *reinterpret_cast<const v8u*>(a + h) * *reinterpret_cast<const v8u*>(b + h);
    acc1 += *reinterpret_cast<const v8u*>(a + h + 8) * *reinterpret_cast<const v8u*>(b + h + 8);
  }
  acc0 += acc1;
  float s = 0.f;
  for (int c = 0; c < 8; ++c) s += acc0[c];
  for (; h < H; ++h) s += a[h] * b[h];
  return s;
}

template <typename T, typename Acc>
Acc dot_scalar(const T* __restrict__ a, const Acc* __restrict__ b, int64_t H) {
  Acc s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t h = 0;
  for (; h + 4 <= H; h += 4) {
    s0 += static_cast<Acc>(a[h]) * b[h];
    s1 += static_cast<Acc>(a[h + 1]) * b[h + 1];
    s2 += static_cast<Acc>(a[h + 2]) * b[h + 2];
    s3 += static_cast<Acc>(a[h + 3]) * b[h + 3];
  }
  for (; h < H; ++h) s0 += static_cast<Acc>(a[h]) * b[h];
  return (s0 + s1) + (s2 + s3);
}

template <typename T, typename Acc>
void contract_rows(const T* g, const Acc* t, const Acc* w, const int64_t* uidx, int64_t K, int64_t N, int64_t S,
                   int64_t H, Acc* out, int64_t U) {
  // token-level rows first (parallel over k, s), then the pooling (K x S adds, negligible): no two threads ever
  // write the same output element.
  std::vector<Acc> tok(static_cast<size_t>(K * S), Acc(0));
  const int64_t rows = K * S;
  const int threads = std::max<int>(1, std::min<int64_t>(at::get_num_threads(), rows));
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t k = r / S, s = r % S;
    if (uidx[s] < 0) continue;
    Acc acc = 0;
    for (int64_t n = 0; n < N; ++n) {
      const T* row = g + ((k * N + n) * S + s) * H;
      Acc d;
      if constexpr (std::is_same<T, float>::value && std::is_same<Acc, float>::value) {
        d = dot_f32(row, t + s * H, H);
      } else {
        d = dot_scalar<T, Acc>(row, t + s * H, H);
      }
      acc += w[n] * d;
    }
    tok[r] = acc;
  }
  for (int64_t k = 0; k < K; ++k)
    for (int64_t s = 0; s < S; ++s)
      if (uidx[s] >= 0) out[k * U + uidx[s]] += tok[k * S + s];
}

at::Tensor contract_tangent_cpu(const at::Tensor& grads_, const at::Tensor& tangent_,
                                const c10::optional<at::Tensor>& weights_, const at::Tensor& unit_index_,
                                int64_t n_units) {
  const auto acc_t = simattr_contract::check_args(grads_, tangent_, weights_, unit_index_, n_units);
  TORCH_CHECK(!grads_.is_cuda() && !tangent_.is_cuda(), "contract_tangent: the CPU kernel takes CPU tensors");
  const int64_t K = grads_.size(0), N = grads_.size(1), S = grads_.size(2), H = grads_.size(3);
  const auto st = grads_.scalar_type();
  auto grads = grads_.contiguous();
  auto tangent = tangent_.to(acc_t).contiguous();
  auto weights = weights_.has_value() ? weights_->to(acc_t).contiguous() : at::ones({N}, grads.options().dtype(acc_t));
  auto uidx = unit_index_.to(at::kLong).contiguous();
  const int64_t* up = uidx.data_ptr<int64_t>();
  for (int64_t s = 0; s < S; ++s)
    TORCH_CHECK(up[s] >= -1 && up[s] < n_units, "contract_tangent: unit_index out of range");
  auto out = at::zeros({K, n_units}, grads.options().dtype(acc_t));
  if (K == 0 || N == 0 || S == 0 || n_units == 0) return out;
  if (st == at::kDouble) {
    contract_rows<double, double>(grads.data_ptr<double>(), tangent.data_ptr<double>(), weights.data_ptr<double>(),
                                  up, K, N, S, H, out.data_ptr<double>(), n_units);
  } else if (st == at::kFloat) {
    contract_rows<float, float>(grads.data_ptr<float>(), tangent.data_ptr<float>(), weights.data_ptr<float>(), up, K,
                                N, S, H, out.data_ptr<float>(), n_units);
  } else if (st == at::kBFloat16) {
    contract_rows<at::BFloat16, float>(grads.data_ptr<at::BFloat16>(), tangent.data_ptr<float>(),
                                       weights.data_ptr<float>(), up, K, N, S, H, out.data_ptr<float>(), n_units);
  } else {
    contract_rows<at::Half, float>(grads.data_ptr<at::Half>(), tangent.data_ptr<float>(), weights.data_ptr<float>(),
                                   up, K, N, S, H, out.data_ptr<float>(), n_units);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(simattr, m) {
  m.def("contract_tangent(Tensor grads, Tensor tangent, Tensor? weights, Tensor unit_index, int n_units) -> Tensor");
}

TORCH_LIBRARY_IMPL(simattr, CPU, m) { m.impl("contract_tangent", &contract_tangent_cpu); }
