#include "thread_cache.h"

#include <pthread.h>

#include <algorithm>
#include <mutex>
#include <new>

namespace hpa {

std::atomic<bool> g_fast_gate{false};
thread_local constinit ThreadCacheSlot t_cache_slots[8] = {};

// ---------------------------------------------------------------------------------------------
// Large slots

Span* ThreadCache::take_large(size_t requested, PageKind kind, int want_node) {
  for (int i = static_cast<int>(large_count) - 1; i >= 0; --i) {
    const LargeSlot& slot = large[i];
    if (slot.requested != requested || slot.kind != kind || slot.node != want_node) continue;
    Span* s = slot.span;
    for (uint32_t j = i + 1; j < large_count; ++j) large[j - 1] = large[j];
    --large_count;
    large_bytes -= s->bytes();
    bump(cached_bytes, -static_cast<int64_t>(s->bytes()));
    return s;
  }
  return nullptr;
}

int ThreadCache::take_large_of(PageKind kind, int want_node, Span** out) {
  int n = 0;
  uint32_t kept = 0;
  size_t bytes = 0;
  for (uint32_t i = 0; i < large_count; ++i) {
    if (large[i].kind == kind && large[i].node == want_node) {
      out[n++] = large[i].span;
      bytes += large[i].span->bytes();
    } else {
      large[kept++] = large[i];
    }
  }
  large_count = kept;
  large_bytes -= bytes;
  bump(cached_bytes, -static_cast<int64_t>(bytes));
  return n;
}

int ThreadCache::take_all_large(Span** out) {
  const int n = static_cast<int>(large_count);
  for (int i = 0; i < n; ++i) out[i] = large[i].span;
  large_count = 0;
  large_bytes = 0;
  return n;
}

int ThreadCache::put_large(Span* s, size_t requested, PageKind kind, int span_node, Span** evicted) {
  int n = 0;
  if (large_count == kLargeSlots || large_bytes + s->bytes() > kLargeBytes) {
    // Make room for a few more at once, so that a thread that only frees (the consumer of
    // another thread's blocks) gives spans back in batches.
    uint32_t drop = 0;
    size_t left = large_bytes;
    while (drop < large_count &&
           (large_count - drop > kLargeSlots / 2 || left + s->bytes() > kLargeBytes / 2)) {
      left -= large[drop].span->bytes();
      evicted[n++] = large[drop++].span;
    }
    for (uint32_t j = drop; j < large_count; ++j) large[j - drop] = large[j];
    large_count -= drop;
    bump(cached_bytes, -static_cast<int64_t>(large_bytes - left));
    large_bytes = left;
  }
  large[large_count++] = {s, requested, kind, static_cast<int16_t>(span_node)};
  large_bytes += s->bytes();
  bump(cached_bytes, static_cast<int64_t>(s->bytes()));
  return n;
}

// ---------------------------------------------------------------------------------------------
// The registry

namespace {

// Adds `from`'s counters to `to`'s (the dead threads' totals, or a sum being read).
void add_frees(ThreadCache* to, const ThreadCache& from) {
  ThreadCache::bump(to->freed, from.freed.load(std::memory_order_acquire));
  ThreadCache::bump(to->slack_freed, from.slack_freed.load(std::memory_order_acquire));
}
void add_allocations(ThreadCache* to, const ThreadCache& from) {
  ThreadCache::bump(to->allocated, from.allocated.load(std::memory_order_acquire));
  ThreadCache::bump(to->slack_allocated, from.slack_allocated.load(std::memory_order_acquire));
}
void add_counts(ThreadCache* to, const ThreadCache& from) {
  add_frees(to, from);
  add_allocations(to, from);
}

// Generation of the pool living in each slot (0: none). Generations are never reused, so a
// thread whose slot holds another generation knows its cache belonged to a dead pool.
std::atomic<uint64_t> g_slot_generation[ThreadCaches::kMaxSlots];
std::atomic<uint64_t> g_next_generation{1};
std::mutex g_slots_mu;

pthread_key_t g_exit_key;
pthread_once_t g_exit_key_once = PTHREAD_ONCE_INIT;

// Objects a thread keeps per class: about 64 KiB worth, between 1 and 256, so that a thread holds
// a few MiB at most however many classes it uses (its cache is memory no other thread can reuse).
uint32_t bin_limit(int c) {
  return static_cast<uint32_t>(std::clamp<size_t>(64 * kKiB / SizeClasses::size(c), 1, 256));
}

}  // namespace

// Runs at thread exit (pthread key destructor): gives the thread's caches back to their pools.
void thread_caches_exit(void*) {
  for (int i = 0; i < ThreadCaches::kMaxSlots; ++i) {
    ThreadCacheSlot& slot = t_cache_slots[i];
    ThreadCache* tc = slot.cache;
    const bool live = tc != nullptr && slot.generation == g_slot_generation[i].load(std::memory_order_acquire);
    slot = {0, nullptr};
    if (live) tc->owner->exit(tc);
  }
}

int ThreadCaches::claim_slot() {
  std::lock_guard<std::mutex> lock(g_slots_mu);
  for (int i = 1; i < kMaxSlots; ++i)  // slot 0 is the process allocator's
    if (g_slot_generation[i].load(std::memory_order_relaxed) == 0) return i;
  return -1;
}

ThreadCaches::ThreadCaches(int slot, Drain drain, void* ctx)
    : slot_(slot), generation_(g_next_generation.fetch_add(1)), drain_(drain), drain_ctx_(ctx) {
  pthread_once(&g_exit_key_once, [] { pthread_key_create(&g_exit_key, &thread_caches_exit); });
  g_fast_gate.store(asymmetric_fences(), std::memory_order_relaxed);
  g_slot_generation[slot_].store(generation_, std::memory_order_release);
}

ThreadCaches::~ThreadCaches() {
  g_slot_generation[slot_].store(0, std::memory_order_release);
  // Only test pools die, with no other thread using them; what the caches hold dies with them.
  while (head_ != nullptr) {
    ThreadCache* tc = head_;
    head_ = tc->next;
    delete tc;
  }
  t_cache_slots[slot_] = {0, nullptr};
}

ThreadCache* ThreadCaches::create(int node) {
  auto* tc = new (std::nothrow) ThreadCache();
  if (tc == nullptr) return nullptr;
  tc->owner = this;
  tc->node = node;
  for (int c = 1; c < kNumClasses; ++c) tc->bins[c].max = bin_limit(c);
  mu_.lock();
  tc->next = head_;
  if (head_ != nullptr) head_->prev = tc;
  head_ = tc;
  mu_.unlock();
  t_cache_slots[slot_] = {generation_, tc};
  pthread_setspecific(g_exit_key, reinterpret_cast<void*>(1));  // any non-null value arms it
  return tc;
}

void ThreadCaches::exit(ThreadCache* tc) {
  fold(tc);
  mu_.lock();
  add_counts(&dead_, *tc);
  if (tc->prev != nullptr) tc->prev->next = tc->next; else head_ = tc->next;
  if (tc->next != nullptr) tc->next->prev = tc->prev;
  mu_.unlock();
  drain_(drain_ctx_, tc);  // unreachable by anyone else now
  delete tc;
}

void ThreadCaches::quiesce_all() {
  for (ThreadCache* tc = head_; tc != nullptr; tc = tc->next) {
    tc->flush_mu.lock();
    tc->revoked.store(1, std::memory_order_seq_cst);
  }
  if (g_fast_gate.load(std::memory_order_relaxed)) heavy_fence();
  for (ThreadCache* tc = head_; tc != nullptr; tc = tc->next) {
    // Owners are inside for a few instructions, unless preempted there.
    for (int spins = 0; tc->busy.load(std::memory_order_seq_cst) != 0; ++spins) {
      if (spins < 64) cpu_relax(); else yield_cpu();
    }
  }
}

void ThreadCaches::release_all() {
  for (ThreadCache* tc = head_; tc != nullptr; tc = tc->next) {
    tc->revoked.store(0, std::memory_order_release);
    tc->flush_mu.unlock();
  }
}

void ThreadCaches::lock_all() {
  mu_.lock();
  quiesce_all();
  orphan_mu_.lock();
}

void ThreadCaches::unlock_all() {
  orphan_mu_.unlock();
  release_all();
  mu_.unlock();
}

void ThreadCaches::drop_others_after_fork() {
  ThreadCache* mine = mine_if_any();
  while (head_ != nullptr) {
    ThreadCache* tc = head_;
    head_ = tc->next;
    if (tc == mine) continue;
    add_counts(&dead_, *tc);
    delete tc;
  }
  if (mine != nullptr) {
    mine->prev = mine->next = nullptr;
    head_ = mine;
  }
}

// ---------------------------------------------------------------------------------------------
// Statistics

void ThreadCaches::raise_peak(int64_t value) {
  int64_t seen = peak_.load(std::memory_order_relaxed);
  while (value > seen && !peak_.compare_exchange_weak(seen, value, std::memory_order_relaxed)) {
  }
}

void ThreadCaches::orphan(int64_t n, int64_t slack) {
  orphan_mu_.lock();
  if (n > 0) orphan_.count_alloc(n, slack);
  else orphan_.count_free(-n, -slack);
  fold(&orphan_);
  orphan_mu_.unlock();
}

void ThreadCaches::fold(ThreadCache* tc) {
  const int64_t net = tc->allocated.load(std::memory_order_relaxed) - tc->freed.load(std::memory_order_relaxed);
  const int64_t change = net - tc->folded;
  const int64_t high = tc->high.load(std::memory_order_relaxed);
  if (change == 0) {  // back where it was (an allocation after a free of the same size)
    if (high > 0) {
      raise_peak(folded_.load(std::memory_order_relaxed) + high);
      tc->high.store(0, std::memory_order_relaxed);
    }
    return;
  }
  const int64_t before = folded_.fetch_add(change, std::memory_order_relaxed);
  raise_peak(before + std::max(high, change));
  tc->folded = net;
  tc->high.store(0, std::memory_order_relaxed);
}

void ThreadCaches::fold_after_free(ThreadCache* tc) {
  const int64_t net = tc->allocated.load(std::memory_order_relaxed) - tc->freed.load(std::memory_order_relaxed);
  if (net - tc->folded < -kFoldAfterFree) fold(tc);
}

int64_t ThreadCaches::approx_allocated() const {
  int64_t total = folded_.load(std::memory_order_relaxed);
  if (const ThreadCache* tc = mine_if_any())
    total += tc->allocated.load(std::memory_order_relaxed) - tc->freed.load(std::memory_order_relaxed) - tc->folded;
  return total;
}

ThreadCaches::CallerBytes ThreadCaches::allocated_bytes() {
  if (ThreadCache* self = mine_if_any()) fold(self);
  // Every thread's frees first, then every thread's allocations: a block freed on one thread after
  // another made it is then counted out only if it was counted in, so the sum errs only by the
  // blocks allocated while it is read, never below what callers hold.
  ThreadCache sum;
  mu_.lock();
  add_frees(&sum, dead_);
  for (const ThreadCache* tc = head_; tc != nullptr; tc = tc->next) add_frees(&sum, *tc);
  add_frees(&sum, orphan_);
  add_allocations(&sum, dead_);
  for (const ThreadCache* tc = head_; tc != nullptr; tc = tc->next) add_allocations(&sum, *tc);
  add_allocations(&sum, orphan_);
  mu_.unlock();
  CallerBytes out;
  out.bytes.allocated = sum.allocated.load(std::memory_order_relaxed);
  out.bytes.freed = sum.freed.load(std::memory_order_relaxed);
  out.bytes.current = out.bytes.allocated - out.bytes.freed;
  raise_peak(out.bytes.current);
  out.bytes.peak = peak_.load(std::memory_order_relaxed);
  out.slack_allocated = sum.slack_allocated.load(std::memory_order_relaxed);
  out.slack_freed = sum.slack_freed.load(std::memory_order_relaxed);
  return out;
}

int64_t ThreadCaches::cached_bytes() {
  int64_t total = 0;
  mu_.lock();
  for (const ThreadCache* tc = head_; tc != nullptr; tc = tc->next)
    total += tc->cached_bytes.load(std::memory_order_relaxed) - tc->drained_bytes.load(std::memory_order_relaxed);
  mu_.unlock();
  return total;
}

void ThreadCaches::reset_peak() {
  peak_.store(allocated_bytes().bytes.current, std::memory_order_relaxed);
}

}  // namespace hpa
