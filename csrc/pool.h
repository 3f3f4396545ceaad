// The pool: the facade over span heaps (one per NUMA node and page kind) and the small arena.
//
// A request of up to kSmallMax bytes goes to the small arena; a larger one is served from the
// calling thread's cache when that thread freed a span of exactly the same request size lately
// (up to ThreadCache::kLargeMax, while max_cached is unlimited; see thread_cache.h), else it
// becomes a span of the first heap of its plan that can serve it (explicit huge pages first, then
// THP, then base pages, each fallback counted). Plans come from the allocator's settings; a request of 1 GiB or more
// whose plan starts with the 1 GiB kind gets a composite segment of its own (1 GiB pages, then
// 2 MiB pages). When every heap of the plan refused, each one's fully free segments have already
// been given back (SpanHeap::grow); the plan is tried once more ignoring back-off, then fails.
//
// At fork() the pool is locked, and in the child it forgets what it inherited: see Note [Fork]
// (fork.h), which owns that sequence.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "os.h"
#include "page_map.h"
#include "page_source.h"
#include "placement.h"
#include "small_arena.h"
#include "span.h"
#include "span_heap.h"
#include "stats.h"
#include "thread_cache.h"
#include "topology.h"

namespace hpa {

// Kinds to try for one request, in order.
struct Plan {
  PageKind kinds[kNumPageKinds] = {};
  int count = 0;
  void add(PageKind k) { kinds[count++] = k; }
};

// Bit i set: PageKind i may be used.
using KindMask = uint8_t;
constexpr KindMask kind_bit(PageKind k) { return static_cast<KindMask>(1u << static_cast<int>(k)); }
constexpr KindMask kAllKinds = (1u << kNumPageKinds) - 1;

// The plan of a request of `nbytes` under the page kinds `kinds` allows: 1 GiB pages first from
// `huge_1g_min_size` up, then 2 MiB pages, THP, base pages (the process allocator's rule, and the
// test pools').
inline Plan make_plan(KindMask kinds, size_t nbytes, size_t huge_1g_min_size) {
  Plan plan;
  if ((kinds & kind_bit(PageKind::kHugetlb1G)) && nbytes >= huge_1g_min_size) plan.add(PageKind::kHugetlb1G);
  for (PageKind k : {PageKind::kHugetlb2M, PageKind::kThp, PageKind::kBase})
    if (kinds & kind_bit(k)) plan.add(k);
  return plan;
}

struct HugetlbPages {
  int64_t pages_2m = 0;
  int64_t pages_1g = 0;
};

struct Block {
  void* ptr = nullptr;
  size_t size = 0;  // bytes the block holds: its size class or its span
};

class Pool final : private SlabSource, private IdleGauge, private Reclaimer {
 public:
  static constexpr size_t kUnlimited = SIZE_MAX;

  // `cache_slot`: 0 for the process allocator, ThreadCaches::claim_slot() for a test pool.
  Pool(Os& os, const Topology& topology, int cache_slot);
  ~Pool() override;  // test pools only: unmaps everything

  // A block of at least `nbytes` (> 0) placed by `route` (placement.h); {nullptr, 0} when
  // nothing can serve it. `plan` orders the kinds for large requests: the plan's explicit huge
  // page kinds on the home node, then on each spill node (nearest first), then its other kinds on
  // the home node. Small requests take slabs from the home node (set_small_kinds()).
  Block allocate(size_t nbytes, const Route& route, const Plan& plan);
  // A span of exactly `kind` on `node` (or kInterleaveNode), whatever the size; {nullptr, 0} if
  // the kind cannot serve it there.
  Block allocate_exact(size_t nbytes, PageKind kind, int node);
  // Frees `p` if it is ours and returns its size; returns 0 (and does nothing) for a foreign pointer.
  size_t free(void* p);
  // The size of our block starting at `p`, 0 if `p` is not one. Lock-free.
  size_t block_size(const void* p) const;
  // Whether `p` lies inside a segment the pool maps now, block or not. Lock-free.
  bool holds(const void* p) const { return maps_.segments.get(reinterpret_cast<uintptr_t>(p)) != nullptr; }
  // The kind of the pages under `p` when it lies inside a segment the pool maps now, else -1.
  // Lock-free, racy against the segment's unmapping: for a block the caller holds.
  int kind_at(const void* p) const;
  // What the pool knows of address `p`, in words, for a fatal message: the segment holding it
  // (range, kind, node, inherited), the span or slab there, or the range it gave back that held
  // it. Racy reads: only for a process about to stop.
  std::string describe(const void* p) const;

  // Gives back all idle memory that can be given back: every thread's cache, fully free slabs,
  // fully free segments; and ends every heap's back-off, so that pages that came back meanwhile
  // are used at once. Returns the bytes unmapped.
  size_t release();

  // The kinds small requests' slabs may come from (bit of 1 GiB ignored).
  void set_small_kinds(KindMask mask) { small_kinds_.store(mask, std::memory_order_relaxed); }
  // Idle bytes kept: a segment that becomes fully free beyond this is unmapped at once. With a
  // limit, threads keep no large blocks: what they keep goes back now.
  void set_max_cached(size_t bytes) {
    max_cached_.store(bytes, std::memory_order_relaxed);
    if (bytes != kUnlimited) flush_thread_caches();
  }
  // The calling thread's small objects come from `node` from now on.
  void bind_thread_cache(int node);
  // How new memory is bound (PageSource::set_binding).
  void set_binding(bool strict, NodeMask interleave_nodes) { source_.set_binding(strict, interleave_nodes); }
  // The nodes that have heaps: the topology's, and kInterleaveNode on a machine of two or more.
  const std::vector<int>& heap_nodes() const { return heap_nodes_; }

  PoolStats heap_stats(int node, PageKind kind) const;
  // Bytes callers hold (Note [Thread statistics], thread_cache.h), and mapped from the kernel.
  ThreadCaches::CallerBytes allocated_bytes() { return caches_.allocated_bytes(); }
  int64_t approx_allocated_bytes() const { return caches_.approx_allocated(); }
  const AtomicPeakStat& reserved_bytes() const { return global_.reserved_bytes; }
  // Bytes sitting in threads' caches: freed by callers, kept for the same threads.
  int64_t thread_cached_bytes() { return caches_.cached_bytes(); }
  void reset_peaks();
  const Topology& topology() const { return topology_; }
  const PageSource& source() const { return source_; }

  // The steps of Note [Fork] (fork.h), run by ForkHandler only.
  void lock_all();
  void unlock_all();
  void forget_after_fork();  // in the child, after unlock_all()

  // For Note [Fork copies] (fork.h). REQUIRES: lock_all() held.
  // Hugetlb pages mapped by the heaps of `node` (-1: all heaps, kInterleaveNode included).
  HugetlbPages hugetlb_pages(int node = -1) const;
  template <typename Fn>
  void for_each_live_hugetlb_range(Fn&& fn) const {
    for (int node : heap_nodes_)
      for (PageKind k : {PageKind::kHugetlb1G, PageKind::kHugetlb2M})
        heaps_[node * kNumPageKinds + static_cast<int>(k)]->for_each_live_range(fn);
  }

 private:
  Span* get_slab(int node, size_t units) override;
  void put_slabs(Span* chain) override;
  int64_t idle_bytes() const override;
  void reclaim() override { flush_thread_caches(); }
  void reclaim_own(PageKind kind, int node) override;
  // Empties every thread's cache: small objects to the central lists, large spans to the heaps.
  void flush_thread_caches();
  static void drain_thread_cache(void* pool, ThreadCache* tc);  // ThreadCaches::Drain
  // Gives spans taken out of thread caches (state kCached) back to their heaps, one lock per
  // heap; they stay kCached until the heap frees them, so that a double free meanwhile is still
  // refused. Entries are consumed (set to nullptr).
  void return_spans(Span** spans, int n);
  bool caches_large() const { return max_cached_.load(std::memory_order_relaxed) == kUnlimited; }
  SpanHeap& heap(int node, PageKind kind) { return *heaps_[node * kNumPageKinds + static_cast<int>(kind)]; }
  Span* large(size_t nbytes, const Route& route, const Plan& plan, bool force);
  Span* large_from(SpanHeap& heap, size_t nbytes, bool force, uint8_t how);

  const Topology& topology_;
  PageSource source_;
  AddressMaps maps_;
  GlobalStats global_;
  std::atomic<KindMask> small_kinds_{kAllKinds};
  std::atomic<size_t> max_cached_{kUnlimited};
  std::vector<int> heap_nodes_;
  std::unique_ptr<std::unique_ptr<SpanHeap>[]> heaps_;  // [node][kind], heap_nodes_ only
  SmallArena arena_;
  ThreadCaches caches_;
};

}  // namespace hpa
