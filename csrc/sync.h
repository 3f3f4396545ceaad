// Thread synchronization for the pool: a lock that sleeps when its holder is slow, and a
// process-wide memory barrier that lets a thread empty another thread's cache without a fence on
// that thread's fast path.
//
// These are the only system calls outside the OS layer (futex, membarrier, sched_yield): they
// order threads of this process and touch no resource, so a fake of them would test nothing.
//
// Note [Lock checks]
// Built with HPA_LOCK_CHECKS (the C++ unit tests and the test module), every Lock counts the locks
// its thread holds, so that the fake OS layer can fail a test that makes a system call while a
// pool lock is held, and the unit tests can fail one that allocates from the C++ heap meanwhile.
// The fork handlers hold every lock on purpose while they read the kernel's free page counts
// (Note [Fork], fork.h) and say so with a LockCheckExemption. The product build counts nothing.
#pragma once

#include <atomic>
#include <cstdint>

namespace hpa {

// Sleeps while *word == expected (FUTEX_WAIT_PRIVATE); may return early or spuriously.
void futex_wait(std::atomic<uint32_t>* word, uint32_t expected);
// Wakes up to `n` threads sleeping on `word`.
void futex_wake(std::atomic<uint32_t>* word, int n);
// Gives the CPU to another thread (a holder that was preempted).
void yield_cpu();

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Whether heavy_fence() works here (membarrier(2) with MEMBARRIER_CMD_PRIVATE_EXPEDITED, Linux
// 4.14+, registered on the first call). When it does, a thread's side of a Dekker-style handshake
// needs only a compiler barrier: heavy_fence() makes every running thread of the process execute
// a full barrier. Always false under ThreadSanitizer, which cannot see that barrier.
bool asymmetric_fences();
// REQUIRES: asymmetric_fences().
void heavy_fence();

#ifdef HPA_LOCK_CHECKS
namespace lock_checks {
extern thread_local int t_held;
extern thread_local int t_exempt;
inline void locked() { ++t_held; }
inline void unlocked() { --t_held; }
}  // namespace lock_checks
// Whether the calling thread may make a system call or allocate now (Note [Lock checks]).
inline bool no_lock_held() { return lock_checks::t_held == 0 || lock_checks::t_exempt > 0; }
struct LockCheckExemption {
  LockCheckExemption() { ++lock_checks::t_exempt; }
  ~LockCheckExemption() { --lock_checks::t_exempt; }
  LockCheckExemption(const LockCheckExemption&) = delete;
  LockCheckExemption& operator=(const LockCheckExemption&) = delete;
};
#else
inline bool no_lock_held() { return true; }
struct LockCheckExemption {};
#endif

// A mutex for the pool's short critical sections (no system call, no heap allocation inside).
// Uncontended: one compare-and-swap to take it, one exchange to give it back. Contended: the
// waiter spins for about as long as a critical section takes, then sleeps on a futex, so that a
// holder that was preempted (more threads than CPUs) gets the CPU instead of a crowd of spinners.
// A classic three-state futex mutex: 0 free, 1 held, 2 held with sleepers (possibly).
class Lock {
 public:
  Lock() = default;
  Lock(const Lock&) = delete;
  Lock& operator=(const Lock&) = delete;

  void lock() {
    uint32_t expected = 0;
    if (!state_.compare_exchange_strong(expected, 1, std::memory_order_acquire, std::memory_order_relaxed))
        [[unlikely]]
      slow_lock();
#ifdef HPA_LOCK_CHECKS
    lock_checks::locked();
#endif
  }
  void unlock() {
#ifdef HPA_LOCK_CHECKS
    lock_checks::unlocked();
#endif
    if (state_.exchange(0, std::memory_order_release) == 2) [[unlikely]]
      futex_wake(&state_, 1);
  }

 private:
  void slow_lock();
  std::atomic<uint32_t> state_{0};
};

constexpr size_t kCacheLine = 64;

}  // namespace hpa
