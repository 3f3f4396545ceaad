// A heap of spans for one (NUMA node, page kind): segments mapped from the kernel and cut into
// spans of 64 KiB units, split on allocation, coalesced with free neighbours on free, best fit.
//
// Segments of the 2 MiB, THP and base kinds grow by at least kGrowBytes (or the request, rounded
// to 2 MiB), so spans of different sizes share huge pages and the waste per span stays under one
// unit. When a new segment is grown, the free tail of the previous one (whole huge pages that
// the requests since did not fill) goes back to the kernel, so what stays mapped and unused is
// under 2 MiB per segment plus the unfilled part of the newest one. Segments of the 1 GiB kind
// are composite, one per large request: 1 GiB pages for the head and 2 MiB pages for the tail
// (see Os::map_composite), so a tensor of 1 GiB and more wastes less than 2 MiB; such a request
// passes over a cached span that would leave more than an eighth unused.
//
// Before growing, the heap takes back the spans the calling thread keeps of it (the pool's
// Reclaimer), which may coalesce into what the request needs. When the kernel refuses to grow
// the heap, the idle spans every thread keeps are taken back and the heap's fully free segments are given back (the kernel's pool may be
// holding our own idle pages), and growing is tried once more; after that the heap backs off (see
// Backoff). A segment that becomes fully free is unmapped at once when the pool's idle memory
// exceeds its cap (Pool::max_cached), otherwise kept for reuse.
//
// Thread safety: every public method takes the heap's lock, and nothing under it makes a system
// call or allocates from the C++ heap (Note [Lock checks], sync.h): mappings are made, and given
// back, with the lock released; records come from chunks allocated with the lock released.
// Growth is single-flight: threads that miss together while a segment is being mapped wait for
// it when it will have room for them, instead of each mapping one.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <new>

#include "os.h"
#include "page_map.h"
#include "page_source.h"
#include "span.h"
#include "stats.h"
#include "sync.h"

namespace hpa {

// Free spans bucketed by length: buckets 1..kExactBuckets hold spans of exactly that many units,
// the last one the longer spans. A bitmap of non-empty buckets makes best fit a few word scans.
class FreeSpans {
 public:
  static constexpr size_t kExactBuckets = 512;  // 32 MiB
  void push(Span* s);                // most recently freed first
  Span* take(size_t min_units);      // the shortest span of at least min_units, or nullptr
  void remove(Span* s);

 private:
  static size_t bucket_of(size_t units) { return units > kExactBuckets ? kExactBuckets + 1 : units; }
  static constexpr size_t kBuckets = kExactBuckets + 2;  // index 0 unused
  static constexpr size_t kWords = (kBuckets + 63) / 64;
  Span* heads_[kBuckets] = {};
  uint64_t nonempty_[kWords] = {};
};

// Records handed out and taken back by one owner (under its lock). get() hands out a record reset
// to its initial state (T::reset()) and never allocates: the owner adds chunks, allocated with its
// lock released, when spare() runs low. Chunks are freed with the pool.
template <typename T>
class RecordPool {
 public:
  static constexpr size_t kChunk = 128;
  struct Chunk {
    Chunk* next;
    T records[kChunk];
  };

  RecordPool() = default;
  RecordPool(const RecordPool&) = delete;
  RecordPool& operator=(const RecordPool&) = delete;
  ~RecordPool() {
    while (chunks_ != nullptr) {
      Chunk* c = chunks_;
      chunks_ = c->next;
      delete c;
    }
  }
  static Chunk* new_chunk() { return new (std::nothrow) Chunk(); }
  void add(Chunk* c) {
    c->next = chunks_;
    chunks_ = c;
    for (T& r : c->records) put(&r);
  }
  size_t spare() const { return spare_count_; }
  T* get() {
    if (spare_ == nullptr) return nullptr;
    T* r = spare_;
    spare_ = r->next;
    --spare_count_;
    r->reset();
    return r;
  }
  void put(T* r) {
    r->prev = nullptr;
    r->next = spare_;
    spare_ = r;
    ++spare_count_;
  }

 private:
  Chunk* chunks_ = nullptr;
  T* spare_ = nullptr;
  size_t spare_count_ = 0;
};

// Ranges to give back to the kernel once the heap's lock is released.
struct Doomed {
  static constexpr int kMax = 16;
  uintptr_t start[kMax];
  size_t size[kMax];
  int count = 0;
  bool full() const { return count == kMax; }
  void add(uintptr_t s, size_t n) {
    start[count] = s;
    size[count] = n;
    ++count;
  }
};

// After the kernel refuses to grow a heap by some size, requests of that size or more skip the
// attempt for the next `window` tries; the window doubles on each refusal in a row (up to
// kMaxSkip) and closes on a success or when memory is given back. Keyed by size so that one
// absurd request does not push ordinary ones off huge pages.
class Backoff {
 public:
  static constexpr uint32_t kMaxSkip = 256;
  bool skip(size_t size) {
    if (remaining_ == 0 || size < refused_size_) return false;
    --remaining_;
    return true;
  }
  void refused(size_t size) {
    refused_size_ = remaining_ == 0 ? size : std::min(refused_size_, size);
    window_ = window_ == 0 ? 1 : std::min<uint32_t>(window_ * 2, kMaxSkip);
    remaining_ = window_;
  }
  void reset() { window_ = remaining_ = 0; }

 private:
  uint32_t window_ = 0;
  uint32_t remaining_ = 0;
  size_t refused_size_ = 0;
};

// Process-wide totals of mapped memory, kept with atomics so no lock is shared across heaps (they
// change only when the kernel maps or unmaps). What callers hold is the thread caches' business
// (Note [Thread statistics], thread_cache.h).
struct GlobalStats {
  AtomicPeakStat reserved_bytes;
};

// The pool's idle memory (mapped, not in any span in use), for the max_cached rule.
class IdleGauge {
 public:
  virtual ~IdleGauge() = default;
  virtual int64_t idle_bytes() const = 0;
};

// Takes back idle spans that threads keep (thread_cache.h). Called with no heap lock held.
class Reclaimer {
 public:
  virtual ~Reclaimer() = default;
  // Before a heap grows: the calling thread's own spans of that heap, which may coalesce into
  // what the request needs.
  virtual void reclaim_own(PageKind kind, int node) = 0;
  // Before a refused heap falls back: every thread's spans.
  virtual void reclaim() = 0;
};

class alignas(kCacheLine) SpanHeap {
 public:
  static constexpr size_t kGrowBytes = 32 * kMiB;

  SpanHeap(PageKind kind, int node, PageSource& source, AddressMaps& maps, GlobalStats& global,
           const std::atomic<size_t>& max_cached, const IdleGauge& idle, Reclaimer& reclaimer);
  SpanHeap(const SpanHeap&) = delete;
  SpanHeap& operator=(const SpanHeap&) = delete;
  ~SpanHeap();  // unmaps every segment (only test pools are ever destroyed)

  // A span of `units` (> 0) in state kLarge for `requested` bytes (at most units * kUnit), with
  // its first and last unit in the page map.
  // A free span leaving more than `max_leftover` units unused is passed over while the kernel can
  // grow the heap. nullptr when the kernel refuses (or the heap backs off, unless `force`).
  // *from_cache tells whether no new segment was needed. `how` (kServed* bits) counts the span
  // as served by this kind although a preferred kind was tried first, or by this node for a
  // request whose home node could not serve it.
  static constexpr uint8_t kServedAsFallback = 1;
  static constexpr uint8_t kServedForOtherNode = 2;
  Span* allocate(size_t units, size_t requested, size_t max_leftover, bool force, uint8_t how,
                 bool* from_cache);
  // Takes back a span of this heap (state kLarge, kCached or kSlab) and coalesces it.
  void free(Span* s) { free_many(&s, 1); }
  // Takes back `n` spans of this heap under one lock.
  void free_many(Span* const* spans, int n);
  // Unmaps every fully free segment. Returns the bytes unmapped.
  size_t release_free_segments();
  // Asks the kernel again at the next request that needs to grow (empty_cache(): pages may have
  // come back from elsewhere, not only from this heap).
  void end_backoff() {
    std::lock_guard<Lock> lock(mu_);
    backoff_.reset();
  }

  PoolStats stats() const;
  void reset_peaks();
  PageKind kind() const { return kind_; }
  // Bytes of spans in use; read lock-free (possibly a moment old) by the pool's IdleGauge.
  int64_t span_bytes() const { return span_bytes_.load(std::memory_order_relaxed); }

  // Fork: the mutex is taken before fork() and released after it in both processes; in the
  // child, forget_after_fork() (after unlock, one thread) stops reusing inherited memory.
  Lock& mutex() { return mu_; }
  void forget_after_fork();

  // For Note [Fork copies] (fork.h). REQUIRES: lock held.
  // Pages of 2 MiB and of 1 GiB mapped by this heap.
  void count_pages(int64_t* pages_2m, int64_t* pages_1g) const {
    for (const Segment* seg = segments_; seg != nullptr; seg = seg->next) {
      *pages_1g += static_cast<int64_t>(seg->head_1g / kGiB);
      *pages_2m += static_cast<int64_t>((seg->size - seg->head_1g) / k2MiB);
    }
  }
  // Calls fn(begin, size) for every run of whole huge pages that holds a span in use.
  template <typename Fn>
  void for_each_live_range(Fn&& fn) const {
    for (const Segment* seg = segments_; seg != nullptr; seg = seg->next) {
      const uintptr_t end = seg->start + seg->size, head_end = seg->start + seg->head_1g;
      auto page_of = [&](uintptr_t a) { return a < head_end ? kGiB : k2MiB; };
      uintptr_t run_begin = 0, run_end = 0;
      for (uintptr_t a = seg->start; a < end;) {
        const Span* s = map_.get(a);
        if (s == nullptr || s->begin() != a || s->units == 0) break;  // not a span start: stop here
        const SpanState state = s->state.load(std::memory_order_relaxed);
        if (state == SpanState::kLarge || state == SpanState::kSlab) {  // in use, not cached
          const uintptr_t b = s->begin() & ~(uintptr_t{page_of(s->begin())} - 1);
          const uintptr_t last = s->end() - 1;
          const uintptr_t e = (last & ~(uintptr_t{page_of(last)} - 1)) + page_of(last);
          if (run_end != 0 && b <= run_end) {
            run_end = std::max(run_end, e);
          } else {
            if (run_end != 0) fn(run_begin, run_end - run_begin);
            run_begin = b;
            run_end = e;
          }
        }
        a = s->end();
      }
      if (run_end != 0) fn(run_begin, run_end - run_begin);
    }
  }

 private:
  // Maps a segment of at least `units` with no lock held, into the records `seg` and `whole`;
  // returns the free span covering it, not yet in the heap, or nullptr (the records stay unused).
  Span* grow(size_t units, Segment* seg, Span* whole);
  size_t grow_bytes(size_t units) const;  // what grow() maps first for `units`
  // Makes sure the record pools can serve an allocation. REQUIRES: mu_ held; may release and
  // take it again. False when the C++ heap is out of memory.
  bool ensure_records();
  Span* take_fit(size_t units, size_t requested, size_t max_leftover);
  // Hands out the first `units` of free span `s` (off every list), the rest back to the free lists.
  Span* carve(Span* s, size_t units, size_t requested);
  void free_locked(Span* s, Doomed* doomed);
  void add_segment(Span* whole);  // puts a segment from grow() into the heap
  bool whole_segment(const Span* s) const;
  bool over_cap() const;  // idle memory beyond max_cached
  // REQUIRES: s free, whole, off the free lists; lock held. Its range joins `doomed`.
  void drop_segment(Segment* seg, Span* s, Doomed* doomed);
  // Gives back the whole huge pages of a free span that ends the segment (the part of a segment
  // grown for requests that went elsewhere). REQUIRES: lock held; the range joins `doomed`.
  void trim_tail(Segment* seg, Doomed* doomed);
  void unmap_all(const Doomed& doomed);  // REQUIRES: lock not held
  void count_served(uint8_t how) {
    if (how & kServedAsFallback) ++stats_.num_fallbacks;
    if (how & kServedForOtherNode) ++stats_.num_node_fallbacks;
  }

  mutable Lock mu_;
  const PageKind kind_;
  const int node_;
  PageSource& source_;
  PageMap<Span>& map_;
  PageMap<Segment, 21>& segment_map_;
  GlobalStats& global_;
  const std::atomic<size_t>& max_cached_;
  const IdleGauge& idle_;
  Reclaimer& reclaimer_;

  std::atomic<int64_t> span_bytes_{0};  // written under mu_
  FreeSpans free_;
  Segment* segments_ = nullptr;
  RecordPool<Span> spans_;
  RecordPool<Segment> segment_records_;
  PoolStats stats_;
  Backoff backoff_;
  // Single-flight growth: a segment is being mapped that will have `growing_spare_` bytes left
  // after its own request; `grown_` counts finished growths (a futex for the waiters).
  bool growing_ = false;
  size_t growing_spare_ = 0;
  uint32_t waiters_ = 0;
  std::atomic<uint32_t> grown_{0};
};

}  // namespace hpa
