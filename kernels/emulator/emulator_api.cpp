// emulator_api.cpp: entry points only the CPU-emulated library (librescorer_kernels_emu.so)
// has, beside the kernels' own C ABI.
#include "../common.cuh"

extern "C" {

// 1: this library runs the kernels on the CPU emulator (host pointers, no GPU).
RK_API int rk_emu_is_emulator(void) { return 1; }

// Order in which the fibers of a block are resumed: 0 thread-index order, 1 reversed,
// 2 reshuffled every round from `seed`. Different orders expose missing barriers.
RK_API int rk_emu_set_schedule(int schedule, uint64_t seed) {
  if (schedule < rk_emu::kForward || schedule > rk_emu::kShuffled) return RK_ERR_INVALID_ARGUMENT;
  std::lock_guard<std::mutex> lock(rk_emu::rt().launch_mutex);
  rk_emu::rt().schedule = schedule;
  rk_emu::rt().seed = seed;
  return RK_OK;
}

}  // extern "C"
