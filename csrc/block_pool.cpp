#include "block_pool.h"

#include <cstdint>
#include <initializer_list>

namespace hpa {

// ---------------------------------------------------------------------------------------------
// FreeLists

void FreeLists::push(Block* b) {
  const size_t idx = bucket_of(b->size / unit_);
  b->prev = nullptr;
  b->next = heads_[idx];
  if (b->next != nullptr) b->next->prev = b;
  heads_[idx] = b;
  nonempty_[idx / 64] |= uint64_t{1} << (idx % 64);
}

void FreeLists::remove(Block* b) {
  const size_t idx = bucket_of(b->size / unit_);
  if (b->prev != nullptr) {
    b->prev->next = b->next;
  } else {
    heads_[idx] = b->next;
  }
  if (b->next != nullptr) b->next->prev = b->prev;
  b->prev = b->next = nullptr;
  if (heads_[idx] == nullptr) nonempty_[idx / 64] &= ~(uint64_t{1} << (idx % 64));
}

Block* FreeLists::take(size_t min_units, size_t max_units) {
  if (min_units <= kExactBuckets) {
    const size_t hi = std::min(max_units, kExactBuckets);
    for (size_t w = min_units / 64; w <= hi / 64; ++w) {
      uint64_t bits = nonempty_[w];
      if (w == min_units / 64) bits &= ~uint64_t{0} << (min_units % 64);
      if (bits == 0) continue;
      const size_t idx = w * 64 + static_cast<size_t>(__builtin_ctzll(bits));
      if (idx > hi) break;
      Block* b = heads_[idx];
      remove(b);
      return b;
    }
    if (max_units <= kExactBuckets) return nullptr;
  }
  // Blocks beyond the exact buckets: best fit by scanning (few, and each one large).
  Block* best = nullptr;
  for (Block* b = heads_[kExactBuckets + 1]; b != nullptr; b = b->next) {
    const size_t units = b->size / unit_;
    if (units >= min_units && units <= max_units && (best == nullptr || b->size < best->size)) best = b;
  }
  if (best != nullptr) remove(best);
  return best;
}

Block* FreeLists::pop_any() {
  for (size_t w = 0; w < kWords; ++w) {
    if (nonempty_[w] == 0) continue;
    Block* b = heads_[w * 64 + static_cast<size_t>(__builtin_ctzll(nonempty_[w]))];
    remove(b);
    return b;
  }
  return nullptr;
}

bool FreeLists::empty() const {
  for (uint64_t w : nonempty_)
    if (w != 0) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------
// BlockPool

BlockPool::BlockPool(Os& os, const Topology& topology)
    : topology_(topology), source_(os, topology) {
  for (int node : topology_.nodes()) nodes_[node] = std::make_unique<NodePool>();
}

Block* BlockPool::allocate(size_t nbytes, int node, const Plan& plan) {
  NodePool& np = *nodes_[node];
  // Pass 0 respects back-off; pass 1 runs after every idle block was given back and tries all.
  for (int pass = 0; pass < 2; ++pass) {
    for (int i = 0; i < plan.count; ++i) {
      Block* b = try_kind(np, nbytes, node, plan.kinds[i], /*fallback=*/i > 0, /*force=*/pass == 1);
      if (b != nullptr) return b;
    }
    if (pass == 0) release_all();
  }
  return nullptr;
}

Block* BlockPool::try_kind(NodePool& np, size_t nbytes, int node, PageKind kind, bool fallback,
                           bool force) {
  const int k = static_cast<int>(kind);
  const size_t unit = page_kind_unit(kind);
  if (nbytes > SIZE_MAX - unit) return nullptr;
  const size_t size = (nbytes + unit - 1) / unit * unit;
  const size_t units = size / unit;
  // A cached block up to 1/8 larger than needed is taken rather than mapping a new one.
  const size_t max_units = units + units / 8;
  {
    std::lock_guard<std::mutex> g(np.mu);
    if (Block* b = np.free[k].take(units, max_units)) {
      hand_out(np, b, nbytes, /*from_cache=*/true, fallback);
      return b;
    }
    if (!force && np.backoff[k].skip(size)) return nullptr;
  }
  if (!source_.usable(kind)) return nullptr;

  MapResult r = source_.obtain(kind, size, node);
  if (r.addr == nullptr && is_hugetlb(kind) && release(node, kind) > 0) {
    r = source_.obtain(kind, size, node);  // the kernel's pool may have held our idle pages
  }
  if (r.addr == nullptr) {
    std::lock_guard<std::mutex> g(np.mu);
    ++np.stats[k].num_map_failures;
    ++np.total.num_map_failures;
    np.backoff[k].refused(size);
    return nullptr;
  }

  Block* b = nullptr;
  {
    std::lock_guard<std::mutex> g(meta_mu_);
    b = new_record();
    if (b != nullptr) {
      b->start.store(reinterpret_cast<uintptr_t>(r.addr), std::memory_order_relaxed);
      b->size = size;
      b->kind = kind;
      b->node = static_cast<int16_t>(node);
      if (!page_map_.set(reinterpret_cast<uintptr_t>(r.addr), b)) {
        b->start.store(0, std::memory_order_relaxed);
        b->next = spare_records_;
        spare_records_ = b;
        b = nullptr;
      }
    }
  }
  if (b == nullptr) {
    source_.unmap(r.addr, size);
    return nullptr;
  }

  std::lock_guard<std::mutex> g(np.mu);
  np.backoff[k].reset();
  for (PoolStats* s : {&np.stats[k], &np.total}) {
    s->reserved_bytes.add(static_cast<int64_t>(size));
    ++s->num_maps;
  }
  global_.reserved_bytes.add(static_cast<int64_t>(size));
  hand_out(np, b, nbytes, /*from_cache=*/false, fallback);
  return b;
}

void BlockPool::hand_out(NodePool& np, Block* b, size_t nbytes, bool from_cache, bool fallback) {
  b->in_use = true;
  b->requested = nbytes;
  for (PoolStats* s : {&np.stats[static_cast<int>(b->kind)], &np.total}) {
    s->allocated_bytes.add(static_cast<int64_t>(b->size));
    s->requested_bytes.add(static_cast<int64_t>(nbytes));
    ++s->num_allocs;
    if (from_cache) ++s->num_cache_hits;
    if (fallback) ++s->num_fallbacks;
  }
  global_.allocated_bytes.add(static_cast<int64_t>(b->size));
  global_.requested_bytes.add(static_cast<int64_t>(nbytes));
}

void BlockPool::free(Block* b) {
  NodePool& np = *nodes_[b->node];
  std::lock_guard<std::mutex> g(np.mu);
  if (!b->in_use) return;  // a double free: the block is cached already
  for (PoolStats* s : {&np.stats[static_cast<int>(b->kind)], &np.total}) {
    s->allocated_bytes.sub(static_cast<int64_t>(b->size));
    s->requested_bytes.sub(static_cast<int64_t>(b->requested));
    ++s->num_frees;
  }
  global_.allocated_bytes.sub(static_cast<int64_t>(b->size));
  global_.requested_bytes.sub(static_cast<int64_t>(b->requested));
  b->in_use = false;
  b->requested = 0;
  np.free[static_cast<int>(b->kind)].push(b);
}

size_t BlockPool::release(int node, PageKind kind) {
  NodePool& np = *nodes_[node];
  const int k = static_cast<int>(kind);
  Block* doomed = nullptr;
  size_t bytes = 0;
  {
    std::lock_guard<std::mutex> g(np.mu);
    while (Block* b = np.free[k].pop_any()) {
      for (PoolStats* s : {&np.stats[k], &np.total}) {
        s->reserved_bytes.sub(static_cast<int64_t>(b->size));
        ++s->num_unmaps;
      }
      global_.reserved_bytes.sub(static_cast<int64_t>(b->size));
      bytes += b->size;
      b->next = doomed;
      doomed = b;
    }
    if (bytes > 0) np.backoff[k].reset();
  }
  while (doomed != nullptr) {
    Block* next = doomed->next;
    destroy(doomed);
    doomed = next;
  }
  return bytes;
}

size_t BlockPool::release_all() {
  size_t bytes = 0;
  for (int node : topology_.nodes())
    for (int k = 0; k < kNumPageKinds; ++k) bytes += release(node, static_cast<PageKind>(k));
  return bytes;
}

void BlockPool::destroy(Block* b) {
  const uintptr_t start = b->start.load(std::memory_order_relaxed);
  {
    // Forget the address before unmapping it: once unmapped, another allocator may be handed
    // the same address, and its pointers must not look like ours.
    std::lock_guard<std::mutex> g(meta_mu_);
    (void)page_map_.set(start, nullptr);  // cannot fail: the leaf exists
    b->start.store(0, std::memory_order_relaxed);
  }
  source_.unmap(reinterpret_cast<void*>(start), b->size);
  std::lock_guard<std::mutex> g(meta_mu_);
  b->next = spare_records_;
  spare_records_ = b;
}

Block* BlockPool::new_record() {
  if (spare_records_ != nullptr) {
    Block* b = spare_records_;
    spare_records_ = b->next;
    b->prev = b->next = nullptr;
    return b;
  }
  return new (std::nothrow) Block();  // records are recycled, never deleted (see lookup())
}

PoolStats BlockPool::stats(int node, PageKind kind) const {
  const NodePool& np = *nodes_[node];
  std::lock_guard<std::mutex> g(np.mu);
  return np.stats[static_cast<int>(kind)];
}

PoolStats BlockPool::node_stats(int node) const {
  const NodePool& np = *nodes_[node];
  std::lock_guard<std::mutex> g(np.mu);
  return np.total;
}

void BlockPool::reset_peaks() {
  for (int node : topology_.nodes()) {
    NodePool& np = *nodes_[node];
    std::lock_guard<std::mutex> g(np.mu);
    for (PoolStats& s : np.stats) s.reset_peaks();
    np.total.reset_peaks();
  }
  global_.allocated_bytes.reset_peak();
  global_.requested_bytes.reset_peak();
  global_.reserved_bytes.reset_peak();
}

void BlockPool::lock_all() {
  meta_mu_.lock();
  for (int node : topology_.nodes()) nodes_[node]->mu.lock();
}

void BlockPool::unlock_all() {
  for (int node : topology_.nodes()) nodes_[node]->mu.unlock();
  meta_mu_.unlock();
}

}  // namespace hpa
