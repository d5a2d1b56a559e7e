// api.cu: version, error reporting.
#include "common.cuh"

namespace rk {
static thread_local char g_last_error[512] = "";

void set_last_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_last_error, sizeof(g_last_error), fmt, ap);
  va_end(ap);
}
}  // namespace rk

extern "C" {

RK_API int rk_abi_version(void) { return RK_ABI_VERSION; }

RK_API const char *rk_error_string(int status) {
  switch (status) {
    case RK_OK: return "ok";
    case RK_ERR_INVALID_ARGUMENT: return "invalid argument";
    case RK_ERR_UNSUPPORTED_K: return "unsupported k";
    case RK_ERR_WORKSPACE_TOO_SMALL: return "workspace too small";
    case RK_ERR_CUDA: return "CUDA error";
    default: return "unknown status";
  }
}

RK_API const char *rk_last_error(void) { return rk::g_last_error; }

}  // extern "C"
