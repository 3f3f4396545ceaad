// A small lock for the pool's short critical sections (no system call, no allocation inside):
// one atomic exchange to take it, one release store to give it back (a pthread mutex costs a
// read-modify-write for each). Under contention it spins briefly, then yields the CPU, so a
// holder that was preempted gets to run.
#pragma once

#include <sched.h>

#include <atomic>

namespace hpa {

class SpinLock {
 public:
  void lock() {
    if (!locked_.exchange(true, std::memory_order_acquire)) [[likely]] return;
    slow_lock();
  }
  void unlock() { locked_.store(false, std::memory_order_release); }

 private:
  void slow_lock() {
    int spins = 0;
    do {
      while (locked_.load(std::memory_order_relaxed)) {
        if (++spins < 128) {
          __builtin_ia32_pause();
        } else {
          sched_yield();  // the holder may have been preempted: let it run
        }
      }
    } while (locked_.exchange(true, std::memory_order_acquire));
  }
  std::atomic<bool> locked_{false};
};

}  // namespace hpa
