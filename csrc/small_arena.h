// The small arena: requests of up to kSmallMax bytes packed by size class into slabs, spans of the
// span heaps cut into equal objects, so that a 100-byte bias sits on the same huge pages as its
// neighbours instead of on a 4 KiB page of its own.
//
// Size classes are 64-byte multiples (PyTorch's alignment) up to 1 KiB, then four per power of
// two up to 256 KiB, so an object wastes at most a quarter of its size (an eighth on average).
//
// Fast path: each thread keeps, per size class, a short list of free objects (its cache); an
// allocation pops one and a free pushes one, with no lock and no atomic read-modify-write. A
// thread's cache is filled from and drained to the size class's central lists (one mutex per node
// and class) in batches; a central list gets new slabs from, and returns fully free slabs to, the
// node's span heaps. A thread's cache belongs to the node it allocates for (when that changes, the
// thread moved: its cache is drained and serves the new node); an object freed by a thread of
// another node goes straight back to its home node's central list, never into that thread's cache.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>

#include "os.h"
#include "page_map.h"
#include "span.h"
#include "spin_lock.h"
#include "topology.h"

namespace hpa {

constexpr size_t kSmallMax = 256 * kKiB;
constexpr int kNumClasses = 49;  // class 0 is unused

struct SizeClasses {
  // REQUIRES: 0 < n <= kSmallMax.
  static int of(size_t n) { return table()[(n + 63) >> 6]; }
  static size_t size(int c);
  static size_t slab_units(int c);  // at least 8 objects, at least one unit

 private:
  static const uint8_t* table();
};

// Where slabs come from and go back to (the pool's span heaps).
class SlabSource {
 public:
  virtual ~SlabSource() = default;
  // A span of `units` on `node` in state kLarge, or nullptr when no memory can be had.
  virtual Span* get_slab(int node, size_t units) = 0;
  virtual void put_slab(Span* s) = 0;
};

struct ThreadCache;

class SmallArena {
 public:
  // At most kMaxArenas arenas live at once in a process (the real one and test pools).
  static constexpr int kMaxArenas = 8;

  SmallArena(SlabSource& source, PageMap<Span>& map, const Topology& topology, int slot);
  SmallArena(const SmallArena&) = delete;
  SmallArena& operator=(const SmallArena&) = delete;
  ~SmallArena();

  // An object of at least `n` bytes (REQUIRES: 0 < n <= kSmallMax) whose slab lives on `node` (or
  // the calling thread's cache's node); nullptr when no slab can be had. *size gets its class size.
  void* allocate(size_t n, int node, size_t* size);
  // Takes back an object of this arena. REQUIRES: `slab` is the kSlab span holding `p`.
  void free(void* p, Span* slab);
  // Drains the calling thread's cache and gives every fully free slab back to the span heaps.
  void release();
  // The node whose central lists serve the calling thread's cache from now on.
  void set_cache_node(int node);

  // Fork: every lock taken before fork(), released after it in both processes; in the child,
  // forget_after_fork() (after unlock) drops everything cached, which is shared with the parent.
  void lock_all();
  void unlock_all();
  void forget_after_fork();

  // Claims a free slot number for a new arena; -1 when kMaxArenas are alive.
  static int claim_slot();

 private:
  struct Central {
    SpinLock mu;
    Span* partial = nullptr;  // slabs with free objects
    uint32_t empty = 0;       // slabs on `partial` with no live object (one is kept)
  };
  friend struct ThreadCache;
  friend void flush_thread_caches(void*);

  // The calling thread's cache, created on first use for `node`.
  ThreadCache* cache(int node);
  ThreadCache* create_cache(int node);
  void rebind(ThreadCache* tc, int node);  // drains the cache, which serves `node` from now on
  void* refill(ThreadCache* tc, int c);
  void drain(ThreadCache* tc, int c, uint32_t keep);
  void drop_cache(ThreadCache* tc);           // drains and deletes it
  // Under the central lock of (node, c): up to `n` objects into out[]; returns how many.
  uint32_t take_locked(Central& central, int node, int c, void** out, uint32_t n);
  void give_locked(Central& central, void* p, Span* slab);
  Central& central(int node, int c) { return centrals_[node * kNumClasses + c]; }

  SlabSource& source_;
  PageMap<Span>& map_;
  const Topology& topology_;
  const int slot_;
  const uint64_t generation_;
  std::unique_ptr<Central[]> centrals_;  // [node][class]

  std::mutex caches_mu_;
  ThreadCache* caches_ = nullptr;  // every live thread cache of this arena
};

}  // namespace hpa
