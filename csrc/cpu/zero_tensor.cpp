// Fast ZeroTensor kernels for forward-mode AD:
//   torch.ops.simattr.zero_tensor_kernels(enable) -> int   (nesting depth after the call; 0: PyTorch's kernels again)
//
// Under torch.func.jvp every operand without a tangent (a weight, a bias, a mask, a Python scalar) gets an
// "efficient zero tensor" as its tangent, and the forward-mode formulas of add, sub and mul combine it with the real
// tangent. PyTorch's ZeroTensor kernels for those ops (add_zerotensor, mul_zerotensor in BinaryOps.cpp) find the
// result's shape and dtype by re-running the op on meta tensors, and the Meta kernels of add and mul are Python
// functions (torch/_meta_registrations.py overrides the C++ ones): ~0.2 ms of Python per op, whatever the tensor
// size. A BERT layer has ~15 such ops (each Linear's bias, each LayerNorm's weight and bias, the attention scale and
// mask), so a forward-mode pass through a 6-layer model pays ~20 ms of interpreter time — most of a short pair's time
// on a GPU, where the arithmetic takes a few ms.
//
// These kernels compute the same results without the meta round trip, in C++ and without dispatching: the broadcast
// shape (at::infer_size) and the promoted dtype by PyTorch's own promotion state machine, fed exactly what the meta
// route sees (there, `.to(meta)` drops the wrapped-number flag of an ordinary operand and keeps it for a wrapped zero
// tensor, so `zero_f32_0dim * 2.0` is float64 in both). add/sub of a zero tensor and a tensor is the tensor (times
// ±alpha) expanded and converted to the result's shape and dtype; anything times a zero tensor, or zero plus zero, is
// a zero tensor of the result's shape. alpha is checked as PyTorch checks it. Anything unusual — symbolic shapes
// (tracing), a promotion or an alpha PyTorch's route would treat otherwise or reject — takes PyTorch's own route
// (the meta redispatch), so its results and errors stay PyTorch's.
//
// The kernels are registered only while enabled (a nesting count; simattr enables them while an attribution job
// computes, `simattr.zero_tensors.fast_kernels()`), by a torch::Library object whose destruction restores PyTorch's
// kernels.
#include <torch/extension.h>
#include <torch/library.h>

#include <ATen/EmptyTensor.h>
#include <ATen/ExpandUtils.h>
#include <ATen/native/BinaryOps.h>
#include <ATen/native/TypeProperties.h>
#include <c10/util/Exception.h>

#include <memory>
#include <mutex>

namespace {

using at::Tensor;

bool symbolic(const Tensor& t) { return t.unsafeGetTensorImpl()->has_symbolic_sizes_strides(); }

// the device PyTorch's ZeroTensor kernels give the result (a CPU operand, e.g. a wrapped scalar, defers to the other)
c10::Device out_device(const Tensor& a, const Tensor& b) { return a.device() == at::kCPU ? b.device() : a.device(); }

// PyTorch's route (what its ZeroTensor kernels do): run the op on meta tensors for the result's sizes and dtype
Tensor meta_like(const Tensor& a, const Tensor& b, bool is_mul, const at::Scalar& alpha) {
  auto to_meta = [](const Tensor& t) {
    if (t._is_zerotensor() && t.unsafeGetTensorImpl()->is_wrapped_number()) {
      auto m = at::_efficientzerotensor(t.sizes(), t.options().device(at::kMeta));
      m.unsafeGetTensorImpl()->set_wrapped_number(true);
      return m;
    }
    return t.to(at::kMeta);
  };
  constexpr c10::DispatchKeySet meta(at::DispatchKey::Meta);
  return is_mul ? at::_ops::mul_Tensor::redispatch(meta, to_meta(a), to_meta(b))
                : at::_ops::add_Tensor::redispatch(meta, to_meta(a), to_meta(b), alpha);
}

// The dtype the meta route computes: promotion over proxies with each operand's dim-ness and dtype, wrapped only
// if it is a wrapped zero tensor (what `send_to_meta` keeps). No dispatch (safe under dispatch modes and tracing).
at::ScalarType promoted(const Tensor& a, const Tensor& b) {
  static const int64_t one[1] = {1};
  auto proxy = [](const Tensor& t) {
    Tensor p(at::detail::empty_meta(at::IntArrayRef(one, t.dim() == 0 ? 0 : 1), t.scalar_type()));
    if (t._is_zerotensor() && t.unsafeGetTensorImpl()->is_wrapped_number()) p.unsafeGetTensorImpl()->set_wrapped_number(true);
    return p;
  };
  at::native::ResultTypeState state;
  state = at::native::update_result_type_state(proxy(a), state);
  state = at::native::update_result_type_state(proxy(b), state);
  return at::native::result_type(state);
}

bool plain(const Tensor& a, const Tensor& b) {  // shapes and dtypes the fast path reproduces exactly
  return !symbolic(a) && !symbolic(b) && a.layout() == at::kStrided && b.layout() == at::kStrided;
}

Tensor mul_zero(const Tensor& a, const Tensor& b) {
  auto device = out_device(a, b);
  if (plain(a, b)) {
    try {
      auto sizes = at::infer_size_dimvector(a.sizes(), b.sizes());
      return at::_efficientzerotensor(sizes, a.options().dtype(promoted(a, b)).device(device));
    } catch (const c10::Error&) {  // PyTorch's route below gives PyTorch's answer (or error)
    }
  }
  auto m = meta_like(a, b, true, 1);
  return at::_efficientzerotensor(m.sizes(), m.options().device(device));
}

Tensor add_zero(const Tensor& a, const Tensor& b, const at::Scalar& alpha) {
  auto device = out_device(a, b);
  at::DimVector sizes;
  at::TensorOptions options;
  bool fast = false;
  if (plain(a, b)) {
    try {
      sizes = at::infer_size_dimvector(a.sizes(), b.sizes());
      auto dtype = promoted(a, b);
      at::native::alpha_check(dtype, alpha);
      options = a.options().dtype(dtype).device(device);
      fast = true;
    } catch (const c10::Error&) {
    }
  }
  if (!fast) {
    auto m = meta_like(a, b, false, alpha);
    sizes = at::DimVector(m.sizes());
    options = m.options().device(device);
  }
  if (a._is_zerotensor()) {
    if (b._is_zerotensor()) return at::_efficientzerotensor(sizes, options);
    auto out = at::_to_copy(b.expand(sizes), options);
    return alpha.equal(1) ? out : out.mul(alpha);
  }
  return at::_to_copy(a.expand(sizes), options);
}

Tensor sub_zero(const Tensor& a, const Tensor& b, const at::Scalar& alpha) { return add_zero(a, b, -alpha); }

// swallows the dispatcher's "overriding a previously registered kernel" warning while (de)registering
struct Silent : c10::WarningHandler {
  void process(const c10::Warning&) override {}
};

std::mutex lock;
int depth = 0;
std::unique_ptr<torch::Library> library;

int64_t zero_tensor_kernels(bool enable) {
  std::lock_guard<std::mutex> guard(lock);
  Silent silent;
  c10::WarningUtils::WarningHandlerGuard quiet(&silent);
  if (enable) {
    if (depth == 0) {  // a failed registration throws here and leaves the count at 0 (lib's destructor undoes it)
      auto lib = std::make_unique<torch::Library>(torch::Library::IMPL, "aten",
                                                  std::optional<c10::DispatchKey>(c10::DispatchKey::ZeroTensor),
                                                  __FILE__, __LINE__);
      lib->impl("add.Tensor", TORCH_FN(add_zero));
      lib->impl("sub.Tensor", TORCH_FN(sub_zero));
      lib->impl("mul.Tensor", TORCH_FN(mul_zero));
      library = std::move(lib);
    }
    ++depth;
  } else if (depth > 0 && --depth == 0) {
    library.reset();  // PyTorch's ZeroTensor kernels are active again
  }
  return depth;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(simattr, m) {
  m.def("zero_tensor_kernels(bool enable) -> int", &zero_tensor_kernels);
}
