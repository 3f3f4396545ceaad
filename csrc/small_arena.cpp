#include "small_arena.h"

#include <pthread.h>

#include <algorithm>
#include <array>
#include <new>

namespace hpa {

// ---------------------------------------------------------------------------------------------
// Size classes

namespace {

struct ClassTable {
  std::array<size_t, kNumClasses> size{};
  std::array<size_t, kNumClasses> slab_units{};
  std::array<uint8_t, (kSmallMax >> 6) + 1> of{};  // index: (n + 63) >> 6

  ClassTable() {
    int c = 1;
    for (size_t s = 64; s <= kKiB; s += 64) size[c++] = s;
    for (size_t base = kKiB; base < kSmallMax; base *= 2)
      for (int q = 1; q <= 4; ++q) size[c++] = base + q * (base / 4);
    for (int k = 1; k < kNumClasses; ++k) {
      const size_t want = std::max(kUnit, 8 * size[k]);
      slab_units[k] = (want + kUnit - 1) / kUnit;
    }
    int k = 1;
    for (size_t i = 1; i < of.size(); ++i) {
      while (size[k] < i * 64) ++k;
      of[i] = static_cast<uint8_t>(k);
    }
  }
};

const ClassTable& classes() {
  static const ClassTable t;
  return t;
}

}  // namespace

const uint8_t* SizeClasses::table() { return classes().of.data(); }
size_t SizeClasses::size(int c) { return classes().size[c]; }
size_t SizeClasses::slab_units(int c) { return classes().slab_units[c]; }

// ---------------------------------------------------------------------------------------------
// Thread caches

struct ThreadCache {
  struct Bin {
    void* head = nullptr;
    uint32_t count = 0;
    uint32_t max = 0;  // drain to half when a free would exceed it
  };
  Bin bins[kNumClasses];
  SmallArena* owner = nullptr;
  int node = 0;
  ThreadCache* prev = nullptr;  // the owner's registry
  ThreadCache* next = nullptr;
};

namespace {

// Objects a thread keeps per class: about 64 KiB worth, between 1 and 256, so that a thread holds
// a few MiB at most however many classes it uses (its cache is memory no other thread can reuse).
uint32_t cache_limit(int c) {
  return static_cast<uint32_t>(std::clamp<size_t>(64 * kKiB / SizeClasses::size(c), 1, 256));
}

struct TlsSlot {
  uint64_t generation;
  ThreadCache* cache;
};
thread_local TlsSlot t_slots[SmallArena::kMaxArenas];

// Generation of the arena living in each slot (0: none). Generations are never reused, so a
// thread whose slot holds another generation knows its cache belonged to a dead arena.
std::atomic<uint64_t> g_slot_generation[SmallArena::kMaxArenas];
std::atomic<uint64_t> g_next_generation{1};
std::mutex g_slots_mu;

pthread_key_t g_exit_key;
pthread_once_t g_exit_key_once = PTHREAD_ONCE_INIT;

}  // namespace

// Runs at thread exit (pthread key destructor): gives the thread's caches back to their arenas.
void flush_thread_caches(void*) {
  for (int i = 0; i < SmallArena::kMaxArenas; ++i) {
    TlsSlot& slot = t_slots[i];
    if (slot.cache != nullptr && slot.generation == g_slot_generation[i].load(std::memory_order_acquire))
      slot.cache->owner->drop_cache(slot.cache);
    slot = {0, nullptr};
  }
}

int SmallArena::claim_slot() {
  std::lock_guard<std::mutex> lock(g_slots_mu);
  for (int i = 1; i < kMaxArenas; ++i)  // slot 0 is the process allocator's
    if (g_slot_generation[i].load(std::memory_order_relaxed) == 0) return i;
  return -1;
}

SmallArena::SmallArena(SlabSource& source, PageMap<Span>& map, const Topology& topology, int slot)
    : source_(source),
      map_(map),
      topology_(topology),
      slot_(slot),
      generation_(g_next_generation.fetch_add(1)),
      centrals_(new Central[static_cast<size_t>(kMaxNodes) * kNumClasses]) {
  pthread_once(&g_exit_key_once, [] { pthread_key_create(&g_exit_key, &flush_thread_caches); });
  g_slot_generation[slot_].store(generation_, std::memory_order_release);
}

SmallArena::~SmallArena() {
  // Only test arenas die, with no other thread using them.
  g_slot_generation[slot_].store(0, std::memory_order_release);
  std::lock_guard<std::mutex> lock(caches_mu_);
  while (caches_ != nullptr) {
    ThreadCache* tc = caches_;
    caches_ = tc->next;
    delete tc;
  }
  t_slots[slot_] = {0, nullptr};
}

ThreadCache* SmallArena::cache(int node) {
  TlsSlot& slot = t_slots[slot_];
  if (slot.generation == generation_) [[likely]] return slot.cache;
  return create_cache(node);
}

ThreadCache* SmallArena::create_cache(int node) {
  auto* tc = new (std::nothrow) ThreadCache();
  if (tc == nullptr) return nullptr;
  tc->owner = this;
  tc->node = node;
  for (int c = 1; c < kNumClasses; ++c) tc->bins[c].max = cache_limit(c);
  {
    std::lock_guard<std::mutex> lock(caches_mu_);
    tc->next = caches_;
    if (caches_ != nullptr) caches_->prev = tc;
    caches_ = tc;
  }
  t_slots[slot_] = {generation_, tc};
  pthread_setspecific(g_exit_key, reinterpret_cast<void*>(1));  // any non-null value arms it
  return tc;
}

void SmallArena::set_cache_node(int node) {
  ThreadCache* tc = cache(node);
  if (tc != nullptr && tc->node != node) rebind(tc, node);
}

void SmallArena::rebind(ThreadCache* tc, int node) {
  for (int c = 1; c < kNumClasses; ++c) drain(tc, c, 0);  // its objects belong to the old node
  tc->node = node;
}

void SmallArena::drop_cache(ThreadCache* tc) {
  for (int c = 1; c < kNumClasses; ++c) drain(tc, c, 0);
  {
    std::lock_guard<std::mutex> lock(caches_mu_);
    if (tc->prev != nullptr) tc->prev->next = tc->next; else caches_ = tc->next;
    if (tc->next != nullptr) tc->next->prev = tc->prev;
  }
  delete tc;
}

// ---------------------------------------------------------------------------------------------
// Allocation and free

void* SmallArena::allocate(size_t n, int node, size_t* size) {
  const int c = SizeClasses::of(n);
  *size = SizeClasses::size(c);
  ThreadCache* tc = cache(node);
  if (tc != nullptr) [[likely]] {
    if (tc->node != node) [[unlikely]] rebind(tc, node);  // the thread moved to another node
    ThreadCache::Bin& bin = tc->bins[c];
    if (void* p = bin.head) [[likely]] {
      bin.head = *static_cast<void**>(p);
      --bin.count;
      return p;
    }
    return refill(tc, c);
  }
  void* p = nullptr;
  Central& central = this->central(node, c);
  std::lock_guard<SpinLock> lock(central.mu);
  return take_locked(central, node, c, &p, 1) == 1 ? p : nullptr;
}

void SmallArena::free(void* p, Span* slab) {
  const int c = slab->size_class;
  const Segment* seg = slab->segment;
  ThreadCache* tc = cache(seg->node);
  if (tc != nullptr && tc->node == seg->node && !seg->inherited) [[likely]] {
    ThreadCache::Bin& bin = tc->bins[c];
    *static_cast<void**>(p) = bin.head;
    bin.head = p;
    if (++bin.count > bin.max) [[unlikely]] drain(tc, c, bin.max / 2);
    return;
  }
  Central& central = this->central(seg->node, c);
  std::lock_guard<SpinLock> lock(central.mu);
  give_locked(central, p, slab);
}

void* SmallArena::refill(ThreadCache* tc, int c) {
  ThreadCache::Bin& bin = tc->bins[c];
  void* batch[128];
  const uint32_t want = std::clamp<uint32_t>(bin.max / 2, 1, 128);
  uint32_t got;
  {
    Central& central = this->central(tc->node, c);
    std::lock_guard<SpinLock> lock(central.mu);
    got = take_locked(central, tc->node, c, batch, want);
  }
  if (got == 0) return nullptr;
  for (uint32_t i = got - 1; i >= 1; --i) {  // pops come in the order taken: warmest first
    *static_cast<void**>(batch[i]) = bin.head;
    bin.head = batch[i];
  }
  bin.count += got - 1;
  return batch[0];
}

void SmallArena::drain(ThreadCache* tc, int c, uint32_t keep) {
  ThreadCache::Bin& bin = tc->bins[c];
  if (bin.count <= keep) return;
  Central& central = this->central(tc->node, c);
  std::lock_guard<SpinLock> lock(central.mu);
  while (bin.count > keep) {
    void* p = bin.head;
    bin.head = *static_cast<void**>(p);
    --bin.count;
    give_locked(central, p, map_.get(reinterpret_cast<uintptr_t>(p)));
  }
}

uint32_t SmallArena::take_locked(Central& central, int node, int c, void** out, uint32_t n) {
  uint32_t got = 0;
  while (got < n) {
    Span* slab = central.partial;
    if (slab == nullptr) {
      slab = source_.get_slab(node, SizeClasses::slab_units(c));
      if (slab == nullptr) break;
      slab->state.store(SpanState::kSlab, std::memory_order_relaxed);
      slab->size_class = static_cast<uint8_t>(c);
      slab->object_size = static_cast<uint32_t>(SizeClasses::size(c));
      slab->capacity = static_cast<uint32_t>(slab->bytes() / slab->object_size);
      slab->live = 0;
      slab->free_objects = nullptr;
      slab->bump = slab->begin();
      map_.set_range(slab->begin(), slab->bytes(), slab);  // leaves exist: prepared with the segment
      slab->in_partial = true;
      slab->prev = nullptr;
      slab->next = nullptr;
      central.partial = slab;
      ++central.empty;
    }
    if (slab->live == 0) --central.empty;
    while (got < n && slab->live < slab->capacity) {
      void* p = slab->free_objects;
      if (p != nullptr) {
        slab->free_objects = *static_cast<void**>(p);
      } else {
        p = reinterpret_cast<void*>(slab->bump);
        slab->bump += slab->object_size;
      }
      ++slab->live;
      out[got++] = p;
    }
    if (slab->live == slab->capacity) {  // full: off the partial list
      central.partial = slab->next;
      if (slab->next != nullptr) slab->next->prev = nullptr;
      slab->next = nullptr;
      slab->in_partial = false;
    }
  }
  return got;
}

void SmallArena::give_locked(Central& central, void* p, Span* slab) {
  if (slab->segment->inherited) {
    // Note [Fork]: writing the free-list link would copy a page shared with the parent.
    if (--slab->live == 0) source_.put_slab(slab);
    return;
  }
  *static_cast<void**>(p) = slab->free_objects;
  slab->free_objects = p;
  --slab->live;
  if (!slab->in_partial) {
    slab->prev = nullptr;
    slab->next = central.partial;
    if (central.partial != nullptr) central.partial->prev = slab;
    central.partial = slab;
    slab->in_partial = true;
  }
  if (slab->live != 0) return;
  if (central.empty == 0) {  // keep one empty slab per class against churn
    ++central.empty;
    return;
  }
  if (slab->in_partial) {
    if (slab->prev != nullptr) slab->prev->next = slab->next; else central.partial = slab->next;
    if (slab->next != nullptr) slab->next->prev = slab->prev;
    slab->prev = slab->next = nullptr;
    slab->in_partial = false;
  }
  source_.put_slab(slab);
}

void SmallArena::release() {
  if (ThreadCache* tc = cache(topology_.nodes().front()))
    for (int c = 1; c < kNumClasses; ++c) drain(tc, c, 0);
  for (int node : topology_.nodes()) {
    for (int c = 1; c < kNumClasses; ++c) {
      Central& central = this->central(node, c);
      std::lock_guard<SpinLock> lock(central.mu);
      for (Span* slab = central.partial; slab != nullptr;) {
        Span* next = slab->next;
        if (slab->live == 0) {
          if (slab->prev != nullptr) slab->prev->next = slab->next; else central.partial = slab->next;
          if (slab->next != nullptr) slab->next->prev = slab->prev;
          slab->prev = slab->next = nullptr;
          slab->in_partial = false;
          --central.empty;
          source_.put_slab(slab);
        }
        slab = next;
      }
    }
  }
}

void SmallArena::lock_all() {
  caches_mu_.lock();
  for (int node : topology_.nodes())
    for (int c = 1; c < kNumClasses; ++c) central(node, c).mu.lock();
}

void SmallArena::unlock_all() {
  for (int node : topology_.nodes())
    for (int c = 1; c < kNumClasses; ++c) central(node, c).mu.unlock();
  caches_mu_.unlock();
}

void SmallArena::forget_after_fork() {
  // Note [Fork]: everything cached belongs to memory shared copy-on-write with the parent, so
  // nothing is written to it here: cached objects are only counted off their slabs, and a slab
  // left with no live object goes back to its (inherited) segment.
  for (int node : topology_.nodes()) {
    for (int c = 1; c < kNumClasses; ++c) {
      Central& central = this->central(node, c);
      for (Span* slab = central.partial; slab != nullptr;) {
        Span* next = slab->next;
        slab->prev = slab->next = nullptr;
        slab->in_partial = false;
        if (slab->live == 0) source_.put_slab(slab);
        slab = next;
      }
      central.partial = nullptr;
      central.empty = 0;
    }
  }
  // The other threads died with the fork; the forking thread's cache stays, empty.
  ThreadCache* mine = t_slots[slot_].generation == generation_ ? t_slots[slot_].cache : nullptr;
  while (caches_ != nullptr) {
    ThreadCache* tc = caches_;
    caches_ = tc->next;
    for (ThreadCache::Bin& bin : tc->bins) {
      for (void* p = bin.head; p != nullptr;) {
        void* next = *static_cast<void**>(p);  // a read: no page is copied
        Span* slab = map_.get(reinterpret_cast<uintptr_t>(p));
        if (--slab->live == 0) source_.put_slab(slab);
        p = next;
      }
      bin.head = nullptr;
      bin.count = 0;
    }
    if (tc != mine) delete tc;
  }
  if (mine != nullptr) {
    mine->prev = mine->next = nullptr;
    caches_ = mine;
  }
}

}  // namespace hpa
