#include "sync.h"

#include <linux/futex.h>
#include <linux/membarrier.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

namespace hpa {

#ifdef HPA_LOCK_CHECKS
namespace lock_checks {
thread_local int t_held = 0;
thread_local int t_exempt = 0;
}  // namespace lock_checks
#endif

void futex_wait(std::atomic<uint32_t>* word, uint32_t expected) {
  (void)syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void futex_wake(std::atomic<uint32_t>* word, int n) {
  (void)syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, n, nullptr, nullptr, 0);
}

void yield_cpu() { sched_yield(); }

namespace {

bool register_membarrier() {
#if defined(__SANITIZE_THREAD__)
  return false;  // ThreadSanitizer cannot see the barrier: use the fenced path it understands
#else
  const long cmds = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
  if (cmds < 0 || !(cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED)) return false;
  return syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
#endif
}

}  // namespace

bool asymmetric_fences() {
  static const bool available = register_membarrier();
  return available;
}

void heavy_fence() {
  // Registered, the command fails only for want of memory for a CPU mask (ENOMEM), or when
  // interrupted: it is tried again. Going on without it would race with the owners' caches.
  while (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0) {
    if (errno != ENOMEM && errno != EINTR && errno != EAGAIN) {
      static const char msg[] = "hugepage_allocator: fatal: membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) failed after registration\n";
      (void)!::write(STDERR_FILENO, msg, sizeof(msg) - 1);
      std::abort();
    }
    sched_yield();
  }
}

// Spins about as long as a critical section of the pool takes (a few hundred nanoseconds to a
// few microseconds), then sleeps. Once a sleeper may exist the state stays 2 until the lock is
// free, so that the holder's unlock wakes one.
void Lock::slow_lock() {
  constexpr int kSpins = 128;
  for (int i = 0; i < kSpins; ++i) {
    uint32_t s = state_.load(std::memory_order_relaxed);
    if (s == 0 && state_.compare_exchange_weak(s, 1, std::memory_order_acquire, std::memory_order_relaxed)) return;
    if (s == 2) break;  // others sleep already: queue behind them
    cpu_relax();
  }
  while (state_.exchange(2, std::memory_order_acquire) != 0) futex_wait(&state_, 2);
}

}  // namespace hpa
