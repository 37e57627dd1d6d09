// The Python module simattr._C. Kernels register themselves as torch operators in their own files with
// TORCH_LIBRARY_FRAGMENT(simattr, m) (so several kernel files never collide); importing simattr._C loads them,
// after which they are torch.ops.simattr.<name>.
#include <torch/extension.h>

static bool with_cuda() {
#ifdef SIMATTR_WITH_CUDA
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "simattr compiled kernels (registered as torch.ops.simattr.*)";
  m.def("with_cuda", &with_cuda, "whether the extension was built with its CUDA sources");
}
