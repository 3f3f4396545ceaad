#include "pool.h"

#include <cinttypes>
#include <cstdio>

namespace hpa {

Pool::Pool(Os& os, const Topology& topology, int cache_slot)
    : topology_(topology),
      source_(os, topology),
      heap_nodes_(topology.nodes()),
      heaps_(new std::unique_ptr<SpanHeap>[static_cast<size_t>(kMaxNodes + 1) * kNumPageKinds]),
      arena_(*this, maps_.spans, topology),
      caches_(cache_slot, &Pool::drain_thread_cache, this) {
  const IdleGauge& idle = *this;
  Reclaimer& reclaimer = *this;
  if (topology_.num_nodes() > 1) heap_nodes_.push_back(kInterleaveNode);
  for (int node : heap_nodes_)
    for (int k = 0; k < kNumPageKinds; ++k)
      heaps_[node * kNumPageKinds + k] = std::make_unique<SpanHeap>(
          static_cast<PageKind>(k), node, source_, maps_, global_, max_cached_, idle, reclaimer);
}

Pool::~Pool() = default;  // the caches and the arena go first (declared last), then the heaps unmap

namespace {

// The node a thread's cache is made for: its small objects' node.
int cache_node(int node, const Topology& topology) {
  return node < kMaxNodes ? node : topology.nodes().front();
}

}  // namespace

Block Pool::allocate(size_t nbytes, const Route& route, const Plan& plan) {
  ThreadCache* tc = caches_.mine(cache_node(route.home, topology_));
  if (nbytes <= kSmallMax) {
    size_t size = 0;
    bool slow = false;
    void* p = arena_.allocate(tc, nbytes, route.home, &size, &slow);
    if (p == nullptr) return {};
    caches_.count_alloc(tc, static_cast<int64_t>(size));
    if (slow && tc != nullptr) caches_.fold(tc);
    return {p, size};
  }
  if (tc != nullptr && nbytes <= ThreadCache::kLargeMax && plan.count > 0 && caches_large()) {
    tc->enter();
    Span* s = tc->take_large(nbytes, plan.kinds[0], route.home);
    tc->leave();
    if (s != nullptr) {
      s->state.store(SpanState::kLarge, std::memory_order_relaxed);
      caches_.count_alloc(tc, static_cast<int64_t>(s->bytes()), static_cast<int64_t>(s->bytes() - nbytes));
      return {reinterpret_cast<void*>(s->begin()), s->bytes()};
    }
  }
  Span* s = large(nbytes, route, plan, /*force=*/false);
  if (s == nullptr) s = large(nbytes, route, plan, /*force=*/true);
  if (s == nullptr) return {};
  s->fallback = s->segment->kind != plan.kinds[0] || s->segment->node != route.home;
  caches_.count_alloc(tc, static_cast<int64_t>(s->bytes()), static_cast<int64_t>(s->bytes() - nbytes));
  if (tc != nullptr) caches_.fold(tc);
  return {reinterpret_cast<void*>(s->begin()), s->bytes()};
}

Block Pool::allocate_exact(size_t nbytes, PageKind kind, int node) {
  if (node != kInterleaveNode && !topology_.has_node(node)) return {};
  if (node == kInterleaveNode && topology_.num_nodes() == 1) node = topology_.nodes().front();
  Span* s = nbytes > (size_t{1} << 48) ? nullptr : large_from(heap(node, kind), nbytes, /*force=*/true, 0);
  if (s == nullptr) return {};
  ThreadCache* tc = caches_.mine(cache_node(node, topology_));
  caches_.count_alloc(tc, static_cast<int64_t>(s->bytes()), static_cast<int64_t>(s->bytes() - nbytes));
  if (tc != nullptr) caches_.fold(tc);
  return {reinterpret_cast<void*>(s->begin()), s->bytes()};
}

Span* Pool::large_from(SpanHeap& h, size_t nbytes, bool force, uint8_t how) {
  const size_t units = (nbytes + kUnit - 1) / kUnit;
  // A composite segment is grown for one tensor of 1 GiB or more: another such tensor takes a
  // cached one only if it leaves under an eighth unused. Smaller requests on 1 GiB pages pack.
  const size_t max_leftover = h.kind() == PageKind::kHugetlb1G && nbytes >= kGiB ? units / 8 : SIZE_MAX;
  bool from_cache = false;
  return h.allocate(units, nbytes, max_leftover, force, how, &from_cache);
}

Span* Pool::large(size_t nbytes, const Route& route, const Plan& plan, bool force) {
  if (nbytes > (size_t{1} << 48)) return nullptr;  // beyond any address space: no heap can serve it
  int tried = 0;
  auto attempt = [&](int node, PageKind kind, uint8_t how) -> Span* {
    if (tried++ > 0) how |= SpanHeap::kServedAsFallback;
    return large_from(heap(node, kind), nbytes, force, how);
  };
  // 1. Explicit huge pages on the home node.
  for (int i = 0; i < plan.count; ++i)
    if (is_hugetlb(plan.kinds[i]))
      if (Span* s = attempt(route.home, plan.kinds[i], 0)) return s;
  // 2. Explicit huge pages of the other nodes the route allows, nearest first.
  if (route.spill != 0 && route.home < kMaxNodes) {
    for (int node : topology_.by_distance(route.home)) {
      if (!(route.spill & node_bit(node))) continue;
      for (int i = 0; i < plan.count; ++i)
        if (is_hugetlb(plan.kinds[i]))
          if (Span* s = attempt(node, plan.kinds[i], SpanHeap::kServedForOtherNode)) return s;
    }
  }
  // 3. THP, then ordinary pages, on the home node.
  for (int i = 0; i < plan.count; ++i)
    if (!is_hugetlb(plan.kinds[i]))
      if (Span* s = attempt(route.home, plan.kinds[i], 0)) return s;
  return nullptr;
}

size_t Pool::free(void* p) {
  Span* s = maps_.spans.get(reinterpret_cast<uintptr_t>(p));
  if (s == nullptr) return 0;
  const uintptr_t addr = reinterpret_cast<uintptr_t>(p);
  switch (s->state.load(std::memory_order_acquire)) {
    case SpanState::kSlab: {
      if (addr < s->begin() || addr >= s->end()) return 0;
      const size_t size = s->object_size;
      ThreadCache* tc = caches_.mine(cache_node(s->segment->node, topology_));
      const bool slow = arena_.free(tc, p, s);
      caches_.count_free(tc, static_cast<int64_t>(size));
      if (slow && tc != nullptr) caches_.fold(tc);
      return size;
    }
    case SpanState::kLarge: {
      if (s->begin() != addr) return 0;
      const size_t size = s->bytes();
      const int64_t slack = static_cast<int64_t>(size - s->requested);
      const Segment* seg = s->segment;
      ThreadCache* tc = caches_.mine(cache_node(seg->node, topology_));
      if (tc != nullptr && size <= ThreadCache::kLargeMax && !s->fallback && !seg->inherited &&
          seg->node == tc->node && caches_large()) {
        // Kept for this thread's next request of the same size (Note [Thread caches]).
        s->state.store(SpanState::kCached, std::memory_order_relaxed);
        Span* evicted[ThreadCache::kLargeSlots];
        tc->enter();
        const int n = tc->put_large(s, s->requested, seg->kind, seg->node, evicted);
        tc->leave();
        caches_.count_free(tc, static_cast<int64_t>(size), slack);
        if (n > 0) {
          return_spans(evicted, n);
          caches_.fold_after_free(tc);
        }
        return size;
      }
      heap(seg->node, seg->kind).free(s);
      caches_.count_free(tc, static_cast<int64_t>(size), slack);
      if (tc != nullptr) caches_.fold_after_free(tc);
      return size;
    }
    case SpanState::kCached:  // freed already: a double free (Note [Foreign pointers])
    case SpanState::kFree:
      return 0;
  }
  return 0;
}

void Pool::return_spans(Span** spans, int n) {
  for (int i = 0; i < n; ++i) {
    if (spans[i] == nullptr) continue;
    const Segment* seg = spans[i]->segment;
    SpanHeap& h = heap(seg->node, seg->kind);
    Span* batch[ThreadCache::kLargeSlots];
    int m = 0;
    for (int j = i; j < n; ++j) {
      if (spans[j] == nullptr || &heap(spans[j]->segment->node, spans[j]->segment->kind) != &h) continue;
      batch[m++] = spans[j];  // still kCached: a second free of it meanwhile is refused
      spans[j] = nullptr;
      if (m == ThreadCache::kLargeSlots) {
        h.free_many(batch, m);
        m = 0;
      }
    }
    if (m > 0) h.free_many(batch, m);
  }
}

void Pool::bind_thread_cache(int node) {
  ThreadCache* tc = caches_.mine(node);
  if (tc != nullptr && tc->node != node) arena_.set_node(tc, node);
}

void Pool::reclaim_own(PageKind kind, int node) {
  ThreadCache* tc = caches_.mine_if_any();
  if (tc == nullptr) return;
  Span* spans[ThreadCache::kLargeSlots];
  tc->enter();
  const int n = tc->take_large_of(kind, node, spans);
  tc->leave();
  if (n == 0) return;
  return_spans(spans, n);
  caches_.fold(tc);
}

void Pool::flush_thread_caches() {
  Span* empty = nullptr;  // slabs left with no object
  Span* spans = nullptr;  // large spans the threads kept
  caches_.for_each_quiesced([&](ThreadCache* tc) {
    SmallArena::Bins bins;
    arena_.detach_bins(tc, &bins);
    arena_.give_bins(bins, &empty);
    const int64_t large_bytes = static_cast<int64_t>(tc->large_bytes);
    Span* large[ThreadCache::kLargeSlots];
    for (int i = 0, n = tc->take_all_large(large); i < n; ++i) push_chain(&spans, large[i]);
    tc->drained_bytes.fetch_add(bins.bytes + large_bytes, std::memory_order_relaxed);
  });
  put_slabs(empty);
  while (spans != nullptr) {
    Span* batch[ThreadCache::kLargeSlots];
    int n = 0;
    while (spans != nullptr && n < ThreadCache::kLargeSlots) {
      batch[n++] = spans;
      spans = spans->next;
    }
    return_spans(batch, n);
  }
}

void Pool::drain_thread_cache(void* pool, ThreadCache* tc) {
  Pool& self = *static_cast<Pool*>(pool);
  SmallArena::Bins bins;
  self.arena_.detach_bins(tc, &bins);
  Span* empty = nullptr;
  self.arena_.give_bins(bins, &empty);
  self.put_slabs(empty);
  Span* spans[ThreadCache::kLargeSlots];
  self.return_spans(spans, tc->take_all_large(spans));
}

size_t Pool::block_size(const void* p) const {
  const Span* s = maps_.spans.get(reinterpret_cast<uintptr_t>(p));
  if (s == nullptr) return 0;
  const uintptr_t addr = reinterpret_cast<uintptr_t>(p);
  switch (s->state.load(std::memory_order_acquire)) {
    case SpanState::kSlab:
      return addr >= s->begin() && addr < s->end() ? s->object_size : 0;
    case SpanState::kLarge:
      return s->begin() == addr ? s->bytes() : 0;
    case SpanState::kCached:
    case SpanState::kFree:
      return 0;
  }
  return 0;
}

int Pool::kind_at(const void* p) const {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(p);
  const Segment* seg = maps_.segments.get(addr);
  if (seg == nullptr) return -1;
  // A composite segment (1 GiB kind) has 2 MiB pages after its head of 1 GiB pages.
  if (seg->kind == PageKind::kHugetlb1G && seg->head_1g > 0 && addr >= seg->start + seg->head_1g)
    return static_cast<int>(PageKind::kHugetlb2M);
  return static_cast<int>(seg->kind);
}

std::string Pool::describe(const void* p) const {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(p);
  char buf[512];
  const Segment* seg = maps_.segments.get(addr);
  if (seg == nullptr) {
    const auto [start, size] = source_.retired().find(addr);
    if (size == 0) return "it lies in no segment of the pool, and in no range the pool gave back lately";
    std::snprintf(buf, sizeof(buf), "it lies in [%#" PRIxPTR ", %#" PRIxPTR "), memory this pool mapped and has since given back to the kernel",
                  start, start + size);
    return buf;
  }
  int n = std::snprintf(buf, sizeof(buf), "it lies in the pool's segment [%#" PRIxPTR ", %#" PRIxPTR ") of %s pages on node %d%s",
                        seg->start, seg->start + seg->size, page_kind_name(seg->kind), seg->node,
                        seg->inherited ? ", inherited from the parent process at fork()" : "");
  // The span holding addr: the map has only the first and last unit of a span, so look back.
  const Span* s = nullptr;
  for (uintptr_t a = addr & ~(uintptr_t{kUnit} - 1); a >= seg->start && s == nullptr; a -= kUnit) {
    const Span* c = maps_.spans.get(a);
    if (c != nullptr && c->segment == seg && c->begin() <= addr && addr < c->end()) s = c;
  }
  if (s != nullptr && n > 0 && static_cast<size_t>(n) < sizeof(buf)) {
    const SpanState state = s->state.load(std::memory_order_relaxed);
    const uintptr_t b = s->begin();
    if (state == SpanState::kSlab && addr >= b && addr < s->end())
      std::snprintf(buf + n, sizeof(buf) - n, ", in a slab of %u-byte objects [%#" PRIxPTR ", %#" PRIxPTR ")%s",
                    s->object_size, b, s->end(),
                    (addr - b) % s->object_size ? ", not at an object's start" : "");
    else if (state == SpanState::kLarge && addr > b && addr < s->end())
      std::snprintf(buf + n, sizeof(buf) - n, ", inside the block [%#" PRIxPTR ", %#" PRIxPTR ") in use, not at its start", b, s->end());
    else if (state == SpanState::kFree && addr >= b && addr < s->end())
      std::snprintf(buf + n, sizeof(buf) - n, ", in the free span [%#" PRIxPTR ", %#" PRIxPTR "): no block in use starts there", b, s->end());
    else if (state == SpanState::kCached && addr >= b && addr < s->end())
      std::snprintf(buf + n, sizeof(buf) - n, ", in the block [%#" PRIxPTR ", %#" PRIxPTR "), freed already and kept in a thread's cache", b, s->end());
    else
      std::snprintf(buf + n, sizeof(buf) - n, ", where no block in use starts");
  } else if (n > 0 && static_cast<size_t>(n) < sizeof(buf)) {
    std::snprintf(buf + n, sizeof(buf) - n, ", where no block in use starts");
  }
  return buf;
}

Span* Pool::get_slab(int node, size_t units) {
  const KindMask mask = small_kinds_.load(std::memory_order_relaxed);
  // As for large requests: a second pass ignores back-off, so pages that came back are found.
  for (int pass = 0; pass < 2; ++pass) {
    int tried = 0;
    for (PageKind kind : {PageKind::kHugetlb2M, PageKind::kThp, PageKind::kBase}) {
      if (!(mask & kind_bit(kind))) continue;
      bool from_cache = false;
      Span* s = heap(node, kind).allocate(units, units * kUnit, SIZE_MAX, /*force=*/pass == 1,
                                          tried++ > 0 ? SpanHeap::kServedAsFallback : 0, &from_cache);
      if (s != nullptr) return s;
    }
  }
  return nullptr;
}

void Pool::put_slabs(Span* chain) {
  while (chain != nullptr) {
    Span* s = chain;
    chain = s->next;
    s->state.store(SpanState::kLarge, std::memory_order_relaxed);
    heap(s->segment->node, s->segment->kind).free(s);
  }
}

size_t Pool::release() {
  flush_thread_caches();
  Span* empty = nullptr;
  arena_.release(&empty);
  put_slabs(empty);
  size_t bytes = 0;
  for (int node : heap_nodes_) {
    for (int k = 0; k < kNumPageKinds; ++k) {
      SpanHeap& h = heap(node, static_cast<PageKind>(k));
      bytes += h.release_free_segments();
      h.end_backoff();
    }
  }
  return bytes;
}

PoolStats Pool::heap_stats(int node, PageKind kind) const {
  return heaps_[node * kNumPageKinds + static_cast<int>(kind)]->stats();
}

void Pool::reset_peaks() {
  for (int node : heap_nodes_)
    for (int k = 0; k < kNumPageKinds; ++k) heap(node, static_cast<PageKind>(k)).reset_peaks();
  caches_.reset_peak();
  global_.reserved_bytes.reset_peak();
}

int64_t Pool::idle_bytes() const {
  int64_t in_use = 0;
  for (int node : heap_nodes_)
    for (int k = 0; k < kNumPageKinds; ++k) in_use += heaps_[node * kNumPageKinds + k]->span_bytes();
  return global_.reserved_bytes.current.load(std::memory_order_relaxed) - in_use;
}

// Lock order: the thread caches (their registry, then each cache), the arena's central lists,
// then each heap.
void Pool::lock_all() {
  caches_.lock_all();
  arena_.lock_all();
  for (int node : heap_nodes_)
    for (int k = 0; k < kNumPageKinds; ++k) heap(node, static_cast<PageKind>(k)).mutex().lock();
}

void Pool::unlock_all() {
  for (int node : heap_nodes_)
    for (int k = 0; k < kNumPageKinds; ++k) heap(node, static_cast<PageKind>(k)).mutex().unlock();
  arena_.unlock_all();
  caches_.unlock_all();
}

HugetlbPages Pool::hugetlb_pages(int only) const {
  HugetlbPages n;
  for (int node : heap_nodes_)
    if (only < 0 || node == only)
      for (PageKind k : {PageKind::kHugetlb1G, PageKind::kHugetlb2M})
      heaps_[node * kNumPageKinds + static_cast<int>(k)]->count_pages(&n.pages_2m, &n.pages_1g);
  return n;
}

void Pool::forget_after_fork() {
  // Heaps first: slabs and spans given back must find their segments marked inherited.
  for (int node : heap_nodes_)
    for (int k = 0; k < kNumPageKinds; ++k) heap(node, static_cast<PageKind>(k)).forget_after_fork();
  arena_.forget_after_fork();
  // Every thread's cache (the other threads died with the fork): counted off, never written.
  caches_.forget_after_fork([&](ThreadCache* tc) {
    arena_.forget_bins(tc);
    Span* spans[ThreadCache::kLargeSlots];
    return_spans(spans, tc->take_all_large(spans));
    tc->cached_bytes.store(tc->drained_bytes.load(std::memory_order_relaxed), std::memory_order_relaxed);
  });
}

}  // namespace hpa
