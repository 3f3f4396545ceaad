// The per-thread side of a pool: what each thread keeps for itself, so that the common allocate
// and free make no write to a line that another thread writes (no lock, no atomic
// read-modify-write). Each thread that uses a pool has one ThreadCache holding
//   - small objects, per size class, a short free list filled from and drained to the small
//     arena's central lists in batches (small_arena.h);
//   - a few large spans it freed, for its next requests of the same size (pool.h);
//   - its share of the byte statistics (Note [Thread statistics]).
//
// Note [Thread caches]
// Another thread may empty a cache at any time: empty_cache(), a heap whose growth the kernel
// refused (the idle spans threads keep are taken back before falling back to another page
// kind), fork(). The owner's operations are not locked; instead the owner marks itself `busy`
// for the few instructions that touch its cache and checks a `revoked` flag, and a thread that
// empties a cache sets `revoked` (holding the cache's flush_mu) and waits until the owner is not
// busy. That is a Dekker handshake, which needs a full fence between each side's store and load.
// The emptying side, which is rare, pays for both with membarrier(2) (heavy_fence(), sync.h); the
// owner's side is then only a compiler barrier. Where membarrier is unavailable (old kernels,
// ThreadSanitizer) the owner's side uses an atomic exchange instead, and stays correct.
// An owner that finds `revoked` set steps back, waits on flush_mu until the cache was emptied,
// and starts its operation again. Inside, owners never take a lock, make a system call or wait:
// a cache is emptied within microseconds of the request, whatever its owner does meanwhile.
//
// Note [Thread statistics]
// Each thread counts the bytes it hands to callers and takes back (`allocated`, `freed`: running
// totals written only by it), so no allocation writes a shared counter. memory_stats() sums them
// under the registry's lock, every thread's frees before every thread's allocations: `current` is
// exact when no other thread allocates meanwhile, and otherwise errs only by the blocks allocated
// while it is read (a block freed on another thread than its own is never counted out without
// having been counted in). The peak needs a global
// order, so threads fold their net change into a shared total at their slow paths (refilling or
// draining small objects, every large request that reaches a heap, thread exit) and the peak is
// raised there and when stats are read. Each thread also remembers the highest point it reached
// since its last fold, so the peak is exact for a program whose allocations come from one thread
// (the one that reads it). With several threads it may miss, from the other threads, what they
// allocated from their own caches since their last fold (at most what those caches held then),
// and overstate by what a thread gave back to its heaps since its last fold (a fold follows a
// large free only once a thread gave back kFoldAfterFree, 64 MiB).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "os.h"
#include "size_class.h"
#include "span.h"
#include "stats.h"
#include "sync.h"

namespace hpa {

class ThreadCaches;

// Whether owners enter their caches with a compiler barrier only (Note [Thread caches]).
extern std::atomic<bool> g_fast_gate;

struct alignas(kCacheLine) ThreadCache {
  // Large spans a thread keeps (pool.h): at most kLargeSlots of at most kLargeMax bytes each,
  // kLargeBytes in all. A request takes one only when it asks for exactly the same bytes.
  static constexpr int kLargeSlots = 32;
  static constexpr size_t kLargeMax = 8 * kMiB;
  static constexpr size_t kLargeBytes = 32 * kMiB;

  struct Bin {
    void* head = nullptr;  // intrusive list through the free objects
    uint32_t count = 0;
    uint32_t max = 0;      // drain to half when a free would exceed it
  };
  struct LargeSlot {
    Span* span;
    size_t requested;
    PageKind kind;
    int16_t node;
  };

  // --- The owner's line: written by the owning thread at every operation, read by others.
  std::atomic<uint32_t> busy{0};
  int node = 0;                            // the node whose central lists fill the small bins
  std::atomic<int64_t> allocated{0};       // bytes handed to callers (running total)
  std::atomic<int64_t> freed{0};           // bytes taken back from callers (running total)
  std::atomic<int64_t> slack_allocated{0}; // of those, beyond what large requests asked for
  std::atomic<int64_t> slack_freed{0};
  std::atomic<int64_t> high{0};            // highest allocated - freed - folded since the last fold
  std::atomic<int64_t> cached_bytes{0};    // bytes in the bins and large slots
  int64_t folded = 0;                      // allocated - freed at the last fold

  // --- The owner's cache proper (Note [Thread caches] for who may touch it when).
  Bin bins[kNumClasses];
  LargeSlot large[kLargeSlots];  // oldest first
  uint32_t large_count = 0;
  size_t large_bytes = 0;

  // --- Written by threads that empty the cache (rarely), read by the owner at every operation.
  alignas(kCacheLine) std::atomic<uint32_t> revoked{0};
  std::atomic<int64_t> drained_bytes{0};  // taken out of cached_bytes by other threads
  Lock flush_mu;
  ThreadCaches* owner = nullptr;
  ThreadCache* prev = nullptr;  // the registry, under its lock
  ThreadCache* next = nullptr;

  // The owner's side of the handshake: between enter() and leave(), nobody else touches the bins
  // or the large slots. REQUIRES: called by the owner; nothing else between them.
  void enter() {
    for (;;) {
      uint32_t r;
      if (g_fast_gate.load(std::memory_order_relaxed)) [[likely]] {
        busy.store(1, std::memory_order_relaxed);
        std::atomic_signal_fence(std::memory_order_seq_cst);
        // Acquire: what an emptier wrote before clearing the flag is seen (free on x86).
        r = revoked.load(std::memory_order_acquire);
      } else {
        busy.exchange(1, std::memory_order_seq_cst);
        r = revoked.load(std::memory_order_seq_cst);
      }
      if (r == 0) [[likely]] return;
      busy.store(0, std::memory_order_release);
      flush_mu.lock();  // held while the cache is being emptied
      flush_mu.unlock();
    }
  }
  void leave() {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    busy.store(0, std::memory_order_release);
  }

  // Statistics, by the owner (Note [Thread statistics]).
  // Release: a reader that sees a count sees what happened before it (ThreadCaches sums frees
  // before allocations). A plain store on x86.
  static void bump(std::atomic<int64_t>& a, int64_t n) {
    a.store(a.load(std::memory_order_relaxed) + n, std::memory_order_release);
  }
  void count_alloc(int64_t n, int64_t slack) {
    const int64_t a = allocated.load(std::memory_order_relaxed) + n;
    allocated.store(a, std::memory_order_release);
    if (slack != 0) bump(slack_allocated, slack);
    const int64_t excursion = a - freed.load(std::memory_order_relaxed) - folded;
    if (excursion > high.load(std::memory_order_relaxed)) high.store(excursion, std::memory_order_relaxed);
  }
  void count_free(int64_t n, int64_t slack) {
    bump(freed, n);
    if (slack != 0) bump(slack_freed, slack);
  }

  // Large slots, inside enter()/leave(). take_large: the newest span of exactly `requested`
  // bytes of `kind` on `node`, off the slots, or nullptr.
  Span* take_large(size_t requested, PageKind kind, int node);
  // Takes every span of `kind` on `node` off the slots, into out[] (kLargeSlots entries).
  int take_large_of(PageKind kind, int node, Span** out);
  // Takes every span off the slots, into out[] (kLargeSlots entries), leaving cached_bytes to the
  // caller (the owner, or a thread that quiesced it: see drained_bytes).
  int take_all_large(Span** out);
  // Keeps `s` (REQUIRES: s->bytes() <= kLargeMax): the oldest spans make room, into evicted[]
  // (at least kLargeSlots entries); returns how many were evicted.
  int put_large(Span* s, size_t requested, PageKind kind, int node, Span** evicted);
};

// Each thread's way to its caches: slot i belongs to the pool of generation `generation`; a
// generation never comes back, so a slot of another generation is a dead pool's.
struct ThreadCacheSlot {
  uint64_t generation;
  ThreadCache* cache;
};
extern thread_local constinit ThreadCacheSlot t_cache_slots[8];  // thread_cache.cpp

// Every ThreadCache of one pool, and each thread's way to its own.
class ThreadCaches {
 public:
  // At most kMaxSlots pools live at once in a process (the real one and test pools).
  static constexpr int kMaxSlots = 8;
  static_assert(kMaxSlots == sizeof(t_cache_slots) / sizeof(t_cache_slots[0]));
  // Gives back everything a cache holds (its owner is exiting, or a test pool dies).
  using Drain = void (*)(void* ctx, ThreadCache* tc);

  // `slot`: 0 for the process allocator's pool, claim_slot() for a test pool.
  ThreadCaches(int slot, Drain drain, void* ctx);
  ThreadCaches(const ThreadCaches&) = delete;
  ThreadCaches& operator=(const ThreadCaches&) = delete;
  ~ThreadCaches();  // test pools only: the caches' memory dies with the pool

  // Claims a free slot number for a new pool; -1 when kMaxSlots are alive.
  static int claim_slot();

  // The calling thread's cache, created on first use for `node`; nullptr if none could be made.
  ThreadCache* mine(int node) {
    const ThreadCacheSlot& slot = t_cache_slots[slot_];
    if (slot.generation == generation_) [[likely]] return slot.cache;
    return create(node);
  }
  // The calling thread's cache if it has one, without creating it.
  ThreadCache* mine_if_any() const {
    const ThreadCacheSlot& slot = t_cache_slots[slot_];
    return slot.generation == generation_ ? slot.cache : nullptr;
  }

  // Runs fn(tc) on every cache, with every owner kept out of its cache (Note [Thread caches]).
  // fn must be short: no lock but the pool's own, no system call, no heap allocation.
  template <typename Fn>
  void for_each_quiesced(Fn&& fn) {
    mu_.lock();
    quiesce_all();
    for (ThreadCache* tc = head_; tc != nullptr; tc = tc->next) fn(tc);
    release_all();
    mu_.unlock();
  }

  // Statistics (Note [Thread statistics]): `n` bytes handed out or taken back, `slack` of them
  // beyond what a large request asked for. `tc` may be nullptr (no cache could be made).
  void count_alloc(ThreadCache* tc, int64_t n, int64_t slack = 0) {
    if (tc != nullptr) [[likely]] tc->count_alloc(n, slack);
    else orphan(n, slack);
  }
  void count_free(ThreadCache* tc, int64_t n, int64_t slack = 0) {
    if (tc != nullptr) [[likely]] tc->count_free(n, slack);
    else orphan(-n, -slack);
  }
  // Folds the owner's net change into the shared total and raises the peak. By the owner.
  void fold(ThreadCache* tc);
  // After a large block went back to its heap: folds once the thread gave back more than
  // kFoldAfterFree since its last fold. An allocation that follows a free of the same size then
  // finds nothing to fold, so a loop of large allocate+free pairs writes no shared counter.
  static constexpr int64_t kFoldAfterFree = 64 * static_cast<int64_t>(kMiB);
  void fold_after_free(ThreadCache* tc);
  // What callers hold: `bytes.current` exact as of the read, peak per Note [Thread statistics];
  // the running totals of slack.
  struct CallerBytes {
    ByteStat bytes;
    int64_t slack_allocated = 0;
    int64_t slack_freed = 0;
  };
  CallerBytes allocated_bytes();
  // The shared total plus the caller's own unfolded change (exact with one thread), lock-free.
  int64_t approx_allocated() const;
  // Bytes in every thread's bins and large slots.
  int64_t cached_bytes();
  void reset_peak();

  // Fork: lock_all() takes the registry and every cache (its owner kept out) before fork();
  // unlock_all() releases them in both processes. In the child, after unlock_all(),
  // forget_after_fork(fn) calls fn(tc) on every cache (the other threads died with the fork),
  // then keeps only the calling thread's, empty.
  void lock_all();
  void unlock_all();
  template <typename Fn>
  void forget_after_fork(Fn&& fn) {
    for (ThreadCache* tc = head_; tc != nullptr; tc = tc->next) fn(tc);
    drop_others_after_fork();
  }

 private:
  friend void thread_caches_exit(void*);

  ThreadCache* create(int node);
  void exit(ThreadCache* tc);  // the owner thread is exiting
  void quiesce_all();          // REQUIRES: mu_
  void release_all();          // REQUIRES: mu_
  void drop_others_after_fork();
  void orphan(int64_t n, int64_t slack);
  void raise_peak(int64_t value);

  const int slot_;
  const uint64_t generation_;
  const Drain drain_;
  void* const drain_ctx_;

  Lock mu_;  // the registry, the dead threads' totals
  ThreadCache* head_ = nullptr;
  ThreadCache dead_;  // the counters of threads that exited (under mu_)

  alignas(kCacheLine) std::atomic<int64_t> folded_{0};  // the totals threads folded in
  std::atomic<int64_t> peak_{0};
  Lock orphan_mu_;
  ThreadCache orphan_;  // the counters of threads that have no cache (out of memory), under orphan_mu_
};

}  // namespace hpa
