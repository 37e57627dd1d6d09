// Batched masked MaxSim on the CPU: torch.ops.simattr.maxsim(Q, C, Qmask, Cmask) -> (values, index).
//
//   values[b, i] = max_{j : Cmask[b, j]} <Q[b, i], C[b, j]>,  index[b, i] = the lowest j attaining it;
//   a masked query token, or one whose document has no unmasked token, gets value 0 and index -1.
//
// Q [Bq, Sq, D], C [Bc, Sd, D] float32 with Bq == Bc or one of them 1 (broadcast); masks bool [Bq, Sq], [Bc, Sd].
// OpenMP over pairs. Per pair, the unmasked document tokens are packed transposed (D x Sd', zero-padded to a
// multiple of NR) into a thread-local buffer, and a register-blocked MR x NR micro-kernel computes dot products
// tile by tile, folding each tile into a running max/argmax: the Sq x Sd score matrix is never stored. Columns
// are scanned in ascending order with a strict ">", so ties go to the lowest document index. x86-64 builds are
// compiled for AVX-512, AVX2 and baseline with GCC function multiversioning (picked at load time).
#include <torch/extension.h>

#include "simd.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

constexpr int MR = 4;   // query rows per micro-tile
constexpr int NR = 16;  // document columns per micro-tile

// acc = q[0..MR) · ct[:, 0..NR) with GCC/Clang vector types: 8 accumulators of 8 floats stay in registers
// (AVX2 in the avx2 clone, pairs of SSE registers in the baseline one), two column loads and four broadcasts
// per k.
using simattr_simd::v8;
using simattr_simd::v8u;
static_assert(MR == 4 && NR == 16, "micro_tile is written for a 4 x 16 tile");

inline void micro_tile(const float* const* qrows, const float* __restrict__ ct, int64_t np, int64_t D,
                       float (&out)[MR][NR]) {
  v8 c00 = {}, c01 = {}, c10 = {}, c11 = {}, c20 = {}, c21 = {}, c30 = {}, c31 = {};
  const float* __restrict__ q0 = qrows[0];
  const float* __restrict__ q1 = qrows[1];
  const float* __restrict__ q2 = qrows[2];
  const float* __restrict__ q3 = qrows[3];
  for (int64_t k = 0; k < D; ++k) {
    const float* col = ct + k * np;
    const v8 b0 = *reinterpret_cast<const v8u*>(col);
    const v8 b1 = *reinterpret_cast<const v8u*>(col + 8);
    const float a0 = q0[k], a1 = q1[k], a2 = q2[k], a3 = q3[k];
    c00 += a0 * b0; c01 += a0 * b1;
    c10 += a1 * b0; c11 += a1 * b1;
    c20 += a2 * b0; c21 += a2 * b1;
    c30 += a3 * b0; c31 += a3 * b1;
  }
  const v8* acc[MR][2] = {{&c00, &c01}, {&c10, &c11}, {&c20, &c21}, {&c30, &c31}};
  for (int r = 0; r < MR; ++r)
    for (int h = 0; h < 2; ++h)
      for (int c = 0; c < 8; ++c) out[r][h * 8 + c] = (*acc[r][h])[c];
}

// One pair: q [Sq, D] (row stride qs), c [Sd, D] (row stride cs), masks; writes val[Sq], idx[Sq].
SIMATTR_CLONES
void pair_maxsim(const float* q, int64_t qs, const bool* qm, const float* c, int64_t cs, const bool* cm,
                 int64_t Sq, int64_t Sd, int64_t D, float* val, int64_t* idx, std::vector<float>& ct,
                 std::vector<int64_t>& cols, std::vector<int64_t>& rows) {
  cols.clear();
  for (int64_t j = 0; j < Sd; ++j)
    if (cm == nullptr || cm[j]) cols.push_back(j);
  rows.clear();
  for (int64_t i = 0; i < Sq; ++i) {
    val[i] = 0.f;
    idx[i] = -1;
    if (qm == nullptr || qm[i]) rows.push_back(i);
  }
  const int64_t nd = static_cast<int64_t>(cols.size());
  if (nd == 0 || rows.empty()) return;
  const int64_t np = (nd + NR - 1) / NR * NR;
  ct.assign(static_cast<size_t>(np * D), 0.f);
  for (int64_t j = 0; j < nd; ++j) {
    const float* src = c + cols[j] * cs;
    for (int64_t k = 0; k < D; ++k) ct[k * np + j] = src[k];
  }
  const float neg = -std::numeric_limits<float>::infinity();
  const int64_t nq = static_cast<int64_t>(rows.size());
  float acc[MR][NR];
  for (int64_t r0 = 0; r0 < nq; r0 += MR) {
    const int R = static_cast<int>(std::min<int64_t>(MR, nq - r0));
    const float* qrows[MR];
    float best[MR];
    int64_t arg[MR];
    for (int r = 0; r < MR; ++r) {
      qrows[r] = q + rows[r0 + std::min(r, R - 1)] * qs;
      best[r] = neg;
      arg[r] = -1;
    }
    for (int64_t j0 = 0; j0 < np; j0 += NR) {
      micro_tile(qrows, ct.data() + j0, np, D, acc);  // rows past R repeat the last row (cheaper than a tail path)
      const int cmax = static_cast<int>(std::min<int64_t>(NR, nd - j0));
      for (int r = 0; r < R; ++r)
        for (int cc = 0; cc < cmax; ++cc)
          if (acc[r][cc] > best[r]) {
            best[r] = acc[r][cc];
            arg[r] = j0 + cc;
          }
    }
    for (int r = 0; r < R; ++r) {
      const int64_t i = rows[r0 + r];
      if (arg[r] >= 0) {
        val[i] = best[r];
        idx[i] = cols[arg[r]];
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> maxsim_cpu(const at::Tensor& Q_, const at::Tensor& C_, const at::Tensor& Qm_,
                                              const at::Tensor& Cm_) {
  TORCH_CHECK(Q_.dim() == 3 && C_.dim() == 3, "maxsim: Q and C must be [batch, tokens, dim]");
  TORCH_CHECK(Q_.size(2) == C_.size(2), "maxsim: Q and C have different widths");
  TORCH_CHECK(Q_.scalar_type() == at::kFloat && C_.scalar_type() == at::kFloat, "maxsim: the CPU kernel takes float32");
  TORCH_CHECK(!Q_.is_cuda() && !C_.is_cuda(), "maxsim: the CPU kernel takes CPU tensors");
  const int64_t Bq = Q_.size(0), Bc = C_.size(0), Sq = Q_.size(1), Sd = C_.size(1), D = Q_.size(2);
  TORCH_CHECK(Bq == Bc || Bq == 1 || Bc == 1, "maxsim: batch sizes differ and neither is 1");
  const int64_t B = std::max(Bq, Bc);
  auto Q = Q_.contiguous();
  auto C = C_.contiguous();
  auto Qm = Qm_.to(at::kBool).contiguous();
  auto Cm = Cm_.to(at::kBool).contiguous();
  TORCH_CHECK(Qm.dim() == 2 && Qm.size(1) == Sq && (Qm.size(0) == Bq || Qm.size(0) == 1 || Qm.size(0) == B),
              "maxsim: Qmask must be [batch, Sq]");
  TORCH_CHECK(Cm.dim() == 2 && Cm.size(1) == Sd && (Cm.size(0) == Bc || Cm.size(0) == 1 || Cm.size(0) == B),
              "maxsim: Cmask must be [batch, Sd]");
  auto values = at::empty({B, Sq}, Q.options());
  auto index = at::empty({B, Sq}, Q.options().dtype(at::kLong));
  const float* qp = Q.data_ptr<float>();
  const float* cp = C.data_ptr<float>();
  const bool* qmp = Qm.data_ptr<bool>();
  const bool* cmp = Cm.data_ptr<bool>();
  float* vp = values.data_ptr<float>();
  int64_t* ip = index.data_ptr<int64_t>();
  const int64_t qmb = Qm.size(0) > 1 ? Sq : 0, cmb = Cm.size(0) > 1 ? Sd : 0;
  const int64_t qb = Bq > 1 ? Sq * D : 0, cb = Bc > 1 ? Sd * D : 0;
  const int threads = std::max<int>(1, std::min<int64_t>(at::get_num_threads(), B));
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    std::vector<float> ct;
    std::vector<int64_t> cols, rows;
#pragma omp for schedule(dynamic, 8)
    for (int64_t b = 0; b < B; ++b) {
      pair_maxsim(qp + b * qb, D, qmp + b * qmb, cp + b * cb, D, cmp + b * cmb, Sq, Sd, D, vp + b * Sq, ip + b * Sq,
                  ct, cols, rows);
    }
  }
  return {values, index};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(simattr, m) {
  m.def("maxsim(Tensor Q, Tensor C, Tensor Qmask, Tensor Cmask) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(simattr, CPU, m) { m.impl("maxsim", &maxsim_cpu); }
