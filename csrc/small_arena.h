// The small arena: requests of up to kSmallMax bytes packed by size class (size_class.h) into
// slabs, spans of the span heaps cut into equal objects, so that a 100-byte bias sits on the same
// huge pages as its neighbours instead of on a 4 KiB page of its own.
//
// Fast path: the calling thread's cache (thread_cache.h) keeps, per size class, a short list of
// free objects; an allocation pops one and a free pushes one, with no lock and no atomic
// read-modify-write. A thread's bins are filled from and drained to the size class's central
// lists (one lock per node and class, each on its own cache line) in batches; a central list
// gets new slabs from, and gives fully free slabs back to, the node's span heaps, always with its
// lock released: no system call and no heap allocation happens under a central lock. A thread's
// bins belong to the node it allocates for (when that changes, the thread moved: its bins are
// drained and serve the new node); an object freed by a thread of another node goes straight
// back to its home node's central list, never into that thread's bins.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "os.h"
#include "page_map.h"
#include "size_class.h"
#include "span.h"
#include "sync.h"
#include "thread_cache.h"
#include "topology.h"

namespace hpa {

// Where slabs come from and go back to (the pool's span heaps). Called with no arena lock held.
class SlabSource {
 public:
  virtual ~SlabSource() = default;
  // A span of `units` on `node` in state kLarge, or nullptr when no memory can be had.
  virtual Span* get_slab(int node, size_t units) = 0;
  // Takes back a chain of slabs (linked through Span::next) that hold no object any more.
  virtual void put_slabs(Span* chain) = 0;
};

class SmallArena {
 public:
  SmallArena(SlabSource& source, PageMap<Span>& map, const Topology& topology);
  SmallArena(const SmallArena&) = delete;
  SmallArena& operator=(const SmallArena&) = delete;

  // An object of at least `n` bytes (REQUIRES: 0 < n <= kSmallMax) from `tc`'s bins, or from the
  // central lists of `node` when `tc` is nullptr; nullptr when no slab can be had. *size gets its
  // class size; *slow is set when the central lists were used.
  void* allocate(ThreadCache* tc, size_t n, int node, size_t* size, bool* slow);
  // Takes back an object. REQUIRES: `slab` is the kSlab span holding `p`. Returns true when the
  // central lists were used.
  bool free(ThreadCache* tc, void* p, Span* slab);

  // The central lists of `node` fill `tc`'s bins from now on (what they hold goes back to the
  // old node). REQUIRES: by tc's owner.
  void set_node(ThreadCache* tc, int node);

  // What a thread's bins held, taken out of them: per class a chain of objects of `node`.
  struct Bins {
    void* head[kNumClasses];
    int node;
    int64_t bytes;
  };
  // Empties `tc`'s bins into *out. REQUIRES: inside tc's enter()/leave(), or tc quiesced, or
  // its owner exiting.
  void detach_bins(ThreadCache* tc, Bins* out);
  // Gives detached objects to the central lists; slabs left with no object are added to *empty
  // (linked through Span::next), for the caller to put back once no lock is held.
  void give_bins(const Bins& bins, Span** empty);
  // The central lists' fully free slabs, into *empty likewise.
  void release(Span** empty);

  // Fork: every lock taken before fork(), released after it in both processes; in the child,
  // forget_after_fork() (after unlock, one thread) drops everything cached, which is shared
  // with the parent, and forget_bins() so for each thread cache.
  void lock_all();
  void unlock_all();
  void forget_after_fork();
  void forget_bins(ThreadCache* tc);

 private:
  struct alignas(kCacheLine) Central {
    Lock mu;
    Span* partial = nullptr;  // slabs with free objects
    uint32_t empty = 0;       // slabs on `partial` with no live object (one is kept)
  };

  void* refill(ThreadCache* tc, int c);
  // Up to `n` objects of class `c` from the central lists of `node` into out[]; returns how many.
  uint32_t take(int node, int c, void** out, uint32_t n);
  uint32_t take_locked(Central& central, void** out, uint32_t n);
  // A chain of objects of class `c` (linked through their first word) back to `node`'s lists.
  void give_chain(int node, int c, void* head, Span** empty);
  void give_locked(Central& central, void* p, Span* slab, Span** empty);
  Central& central(int node, int c) { return centrals_[node * kNumClasses + c]; }

  SlabSource& source_;
  PageMap<Span>& map_;
  const Topology& topology_;
  std::unique_ptr<Central[]> centrals_;  // [node][class]
};

// Adds `s` to a chain of spans linked through Span::next.
inline void push_chain(Span** chain, Span* s) {
  s->prev = nullptr;
  s->next = *chain;
  *chain = s;
}

}  // namespace hpa
