#include "small_arena.h"

#include <algorithm>

namespace hpa {

namespace {

void* next_of(void* p) { return *static_cast<void**>(p); }
void set_next(void* p, void* next) { *static_cast<void**>(p) = next; }

}  // namespace

SmallArena::SmallArena(SlabSource& source, PageMap<Span>& map, const Topology& topology)
    : source_(source),
      map_(map),
      topology_(topology),
      centrals_(new Central[static_cast<size_t>(kMaxNodes) * kNumClasses]) {}

// ---------------------------------------------------------------------------------------------
// The fast path

void* SmallArena::allocate(ThreadCache* tc, size_t n, int node, size_t* size, bool* slow) {
  const int c = SizeClasses::of(n);
  *size = SizeClasses::size(c);
  if (tc == nullptr) [[unlikely]] {
    *slow = true;
    void* p = nullptr;
    return take(node, c, &p, 1) == 1 ? p : nullptr;
  }
  if (tc->node != node) [[unlikely]] set_node(tc, node);  // the thread moved to another node
  tc->enter();
  ThreadCache::Bin& bin = tc->bins[c];
  if (void* p = bin.head) [[likely]] {
    bin.head = next_of(p);
    --bin.count;
    tc->leave();
    ThreadCache::bump(tc->cached_bytes, -static_cast<int64_t>(*size));
    return p;
  }
  tc->leave();
  *slow = true;
  return refill(tc, c);
}

bool SmallArena::free(ThreadCache* tc, void* p, Span* slab) {
  const int c = slab->size_class;
  const Segment* seg = slab->segment;
  if (tc != nullptr && !seg->inherited) [[likely]] {
    tc->enter();
    if (tc->node == seg->node) [[likely]] {
      ThreadCache::Bin& bin = tc->bins[c];
      set_next(p, bin.head);
      bin.head = p;
      if (++bin.count <= bin.max) [[likely]] {
        tc->leave();
        ThreadCache::bump(tc->cached_bytes, static_cast<int64_t>(slab->object_size));
        return false;
      }
      // Over its limit: the most recently freed half stays, the rest goes to the central list.
      const uint32_t keep = bin.max / 2;
      void* last_kept = bin.head;
      for (uint32_t i = 1; i < keep; ++i) last_kept = next_of(last_kept);
      void* chain = keep == 0 ? bin.head : next_of(last_kept);
      const uint32_t moved = bin.count - keep;
      if (keep == 0) bin.head = nullptr; else set_next(last_kept, nullptr);
      bin.count = keep;
      tc->leave();
      ThreadCache::bump(tc->cached_bytes,
                        static_cast<int64_t>(slab->object_size) * (1 - static_cast<int64_t>(moved)));
      Span* empty = nullptr;
      give_chain(seg->node, c, chain, &empty);
      source_.put_slabs(empty);
      return true;
    }
    tc->leave();
  }
  Central& central = this->central(seg->node, c);
  Span* empty = nullptr;
  central.mu.lock();
  give_locked(central, p, slab, &empty);
  central.mu.unlock();
  source_.put_slabs(empty);
  return true;
}

void SmallArena::set_node(ThreadCache* tc, int node) {
  Bins old;
  tc->enter();
  detach_bins(tc, &old);  // its objects belong to the old node
  tc->node = node;
  tc->leave();
  ThreadCache::bump(tc->cached_bytes, -old.bytes);
  Span* empty = nullptr;
  give_bins(old, &empty);
  source_.put_slabs(empty);
}

// ---------------------------------------------------------------------------------------------
// Between a thread's bins and the central lists

void* SmallArena::refill(ThreadCache* tc, int c) {
  void* batch[128];
  const uint32_t want = std::clamp<uint32_t>(tc->bins[c].max / 2, 1, 128);
  const uint32_t got = take(tc->node, c, batch, want);
  if (got == 0) return nullptr;
  tc->enter();
  ThreadCache::Bin& bin = tc->bins[c];
  for (uint32_t i = got - 1; i >= 1; --i) {  // pops come in the order taken: warmest first
    set_next(batch[i], bin.head);
    bin.head = batch[i];
  }
  bin.count += got - 1;
  tc->leave();
  ThreadCache::bump(tc->cached_bytes, static_cast<int64_t>(SizeClasses::size(c)) * (got - 1));
  return batch[0];
}

uint32_t SmallArena::take(int node, int c, void** out, uint32_t n) {
  Central& central = this->central(node, c);
  central.mu.lock();
  uint32_t got = take_locked(central, out, n);
  central.mu.unlock();
  if (got > 0) return got;
  // No free object on this node's slabs: a new slab, fetched with no lock held.
  Span* slab = source_.get_slab(node, SizeClasses::slab_units(c));
  if (slab == nullptr) return 0;
  slab->size_class = static_cast<uint8_t>(c);
  slab->object_size = static_cast<uint32_t>(SizeClasses::size(c));
  slab->capacity = static_cast<uint32_t>(slab->bytes() / slab->object_size);
  slab->live = 0;
  slab->free_objects = nullptr;
  slab->bump = slab->begin();
  map_.set_range(slab->begin(), slab->bytes(), slab);  // leaves exist: prepared with the segment
  slab->state.store(SpanState::kSlab, std::memory_order_release);
  central.mu.lock();
  slab->in_partial = true;
  slab->prev = nullptr;
  slab->next = central.partial;
  if (central.partial != nullptr) central.partial->prev = slab;
  central.partial = slab;
  ++central.empty;
  got = take_locked(central, out, n);
  central.mu.unlock();
  return got;
}

uint32_t SmallArena::take_locked(Central& central, void** out, uint32_t n) {
  uint32_t got = 0;
  while (got < n && central.partial != nullptr) {
    Span* slab = central.partial;
    if (slab->live == 0) --central.empty;
    while (got < n && slab->live < slab->capacity) {
      void* p = slab->free_objects;
      if (p != nullptr) {
        slab->free_objects = next_of(p);
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

void SmallArena::give_chain(int node, int c, void* head, Span** empty) {
  if (head == nullptr) return;
  Central& central = this->central(node, c);
  central.mu.lock();
  while (head != nullptr) {
    void* p = head;
    head = next_of(p);
    give_locked(central, p, map_.get(reinterpret_cast<uintptr_t>(p)), empty);
  }
  central.mu.unlock();
}

void SmallArena::give_locked(Central& central, void* p, Span* slab, Span** empty) {
  if (slab->segment->inherited) {
    // Note [Fork]: writing the free-list link would copy a page shared with the parent.
    if (--slab->live == 0) push_chain(empty, slab);
    return;
  }
  set_next(p, slab->free_objects);
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
  if (slab->prev != nullptr) slab->prev->next = slab->next; else central.partial = slab->next;
  if (slab->next != nullptr) slab->next->prev = slab->prev;
  slab->in_partial = false;
  push_chain(empty, slab);
}

void SmallArena::detach_bins(ThreadCache* tc, Bins* out) {
  out->node = tc->node;
  out->bytes = 0;
  for (int c = 1; c < kNumClasses; ++c) {
    ThreadCache::Bin& bin = tc->bins[c];
    out->head[c] = bin.head;
    out->bytes += static_cast<int64_t>(SizeClasses::size(c)) * bin.count;
    bin.head = nullptr;
    bin.count = 0;
  }
}

void SmallArena::give_bins(const Bins& bins, Span** empty) {
  for (int c = 1; c < kNumClasses; ++c) give_chain(bins.node, c, bins.head[c], empty);
}

void SmallArena::release(Span** empty) {
  for (int node : topology_.nodes()) {
    for (int c = 1; c < kNumClasses; ++c) {
      Central& central = this->central(node, c);
      central.mu.lock();
      for (Span* slab = central.partial; slab != nullptr;) {
        Span* next = slab->next;
        if (slab->live == 0) {
          if (slab->prev != nullptr) slab->prev->next = slab->next; else central.partial = slab->next;
          if (slab->next != nullptr) slab->next->prev = slab->prev;
          slab->in_partial = false;
          --central.empty;
          push_chain(empty, slab);
        }
        slab = next;
      }
      central.mu.unlock();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Fork

void SmallArena::lock_all() {
  for (int node : topology_.nodes())
    for (int c = 1; c < kNumClasses; ++c) central(node, c).mu.lock();
}

void SmallArena::unlock_all() {
  for (int node : topology_.nodes())
    for (int c = 1; c < kNumClasses; ++c) central(node, c).mu.unlock();
}

void SmallArena::forget_after_fork() {
  // Note [Fork]: everything cached belongs to memory shared copy-on-write with the parent, so
  // nothing is written to it here: cached objects are only counted off their slabs, and a slab
  // left with no live object goes back to its (inherited) segment.
  Span* empty = nullptr;
  for (int node : topology_.nodes()) {
    for (int c = 1; c < kNumClasses; ++c) {
      Central& central = this->central(node, c);
      for (Span* slab = central.partial; slab != nullptr;) {
        Span* next = slab->next;
        slab->prev = slab->next = nullptr;
        slab->in_partial = false;
        if (slab->live == 0) push_chain(&empty, slab);
        slab = next;
      }
      central.partial = nullptr;
      central.empty = 0;
    }
  }
  source_.put_slabs(empty);
}

void SmallArena::forget_bins(ThreadCache* tc) {
  Span* empty = nullptr;
  for (ThreadCache::Bin& bin : tc->bins) {
    for (void* p = bin.head; p != nullptr;) {
      void* next = next_of(p);  // a read: no page is copied
      Span* slab = map_.get(reinterpret_cast<uintptr_t>(p));
      if (--slab->live == 0) push_chain(&empty, slab);
      p = next;
    }
    bin.head = nullptr;
    bin.count = 0;
  }
  source_.put_slabs(empty);
}

}  // namespace hpa
