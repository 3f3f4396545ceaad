#include "span_heap.h"

#include <climits>

namespace hpa {

// ---------------------------------------------------------------------------------------------
// FreeSpans

void FreeSpans::push(Span* s) {
  const size_t idx = bucket_of(s->units);
  s->prev = nullptr;
  s->next = heads_[idx];
  if (s->next != nullptr) s->next->prev = s;
  heads_[idx] = s;
  nonempty_[idx / 64] |= uint64_t{1} << (idx % 64);
}

void FreeSpans::remove(Span* s) {
  const size_t idx = bucket_of(s->units);
  if (s->prev != nullptr) {
    s->prev->next = s->next;
  } else {
    heads_[idx] = s->next;
  }
  if (s->next != nullptr) s->next->prev = s->prev;
  s->prev = s->next = nullptr;
  if (heads_[idx] == nullptr) nonempty_[idx / 64] &= ~(uint64_t{1} << (idx % 64));
}

Span* FreeSpans::take(size_t min_units) {
  if (min_units <= kExactBuckets) {
    for (size_t w = min_units / 64; w < kWords; ++w) {
      uint64_t bits = nonempty_[w];
      if (w == min_units / 64) bits &= ~uint64_t{0} << (min_units % 64);
      if (bits == 0) continue;
      const size_t idx = w * 64 + static_cast<size_t>(__builtin_ctzll(bits));
      if (idx > kExactBuckets) break;  // only the long-span bucket is left
      Span* s = heads_[idx];
      remove(s);
      return s;
    }
  }
  // Spans beyond the exact buckets: best fit by scanning (few, and each one long).
  Span* best = nullptr;
  for (Span* s = heads_[kExactBuckets + 1]; s != nullptr; s = s->next)
    if (s->units >= min_units && (best == nullptr || s->units < best->units)) best = s;
  if (best != nullptr) remove(best);
  return best;
}

// ---------------------------------------------------------------------------------------------
// SpanHeap

SpanHeap::SpanHeap(PageKind kind, int node, PageSource& source, AddressMaps& maps, GlobalStats& global,
                   const std::atomic<size_t>& max_cached, const IdleGauge& idle, Reclaimer& reclaimer)
    : kind_(kind),
      node_(node),
      source_(source),
      map_(maps.spans),
      segment_map_(maps.segments),
      global_(global),
      max_cached_(max_cached),
      idle_(idle),
      reclaimer_(reclaimer) {}

SpanHeap::~SpanHeap() {
  for (Segment* seg = segments_; seg != nullptr; seg = seg->next)
    source_.unmap(reinterpret_cast<void*>(seg->start), seg->size);
}

bool SpanHeap::ensure_records() {
  constexpr size_t kMinSpans = 4, kMinSegments = 2;  // an allocation takes at most 2 and 1
  while (spans_.spare() < kMinSpans || segment_records_.spare() < kMinSegments) {
    const bool need_spans = spans_.spare() < kMinSpans;
    const bool need_segments = segment_records_.spare() < kMinSegments;
    mu_.unlock();
    auto* spans = need_spans ? RecordPool<Span>::new_chunk() : nullptr;
    auto* segments = need_segments ? RecordPool<Segment>::new_chunk() : nullptr;
    mu_.lock();
    if (spans != nullptr) spans_.add(spans);
    if (segments != nullptr) segment_records_.add(segments);
    if ((need_spans && spans == nullptr) || (need_segments && segments == nullptr)) return false;
  }
  return true;
}

size_t SpanHeap::grow_bytes(size_t units) const {
  const size_t need = units * kUnit;
  if (kind_ == PageKind::kHugetlb1G) {
    const size_t head = std::max(need / kGiB * kGiB, kGiB);
    return head + (need - std::min(need, head) + k2MiB - 1) / k2MiB * k2MiB;
  }
  return std::max(kGrowBytes, (need + k2MiB - 1) / k2MiB * k2MiB);
}

Span* SpanHeap::allocate(size_t units, size_t requested, size_t max_leftover, bool force, uint8_t how,
                         bool* from_cache) {
  const size_t bytes = units * kUnit;
  *from_cache = true;
  bool backed_off = false, reclaimed = false;
  mu_.lock();
  for (;;) {
    if (!ensure_records()) {
      mu_.unlock();
      return nullptr;
    }
    if (Span* s = take_fit(units, requested, max_leftover)) {
      ++stats_.num_cache_hits;
      count_served(how);
      mu_.unlock();
      return s;
    }
    if (growing_ && bytes <= growing_spare_) {
      // Single flight: another thread is mapping a segment with room for this request too.
      const uint32_t seen = grown_.load(std::memory_order_relaxed);
      ++waiters_;
      mu_.unlock();
      futex_wait(&grown_, seen);
      mu_.lock();
      --waiters_;
      continue;
    }
    if (!backed_off) {  // once per request: the back-off counts requests
      backed_off = true;
      if (!force && backoff_.skip(bytes)) {
        mu_.unlock();
        return nullptr;
      }
    }
    if (reclaimed) break;
    // About to grow: the caller's own idle spans of this heap first (they may coalesce into what
    // is asked), then look again, at the free lists and at a growth another thread may have
    // started meanwhile.
    reclaimed = true;
    mu_.unlock();
    reclaimer_.reclaim_own(kind_, node_);
    mu_.lock();
  }
  Segment* const newest = segments_;  // the segment that could not serve this request
  Segment* seg = segment_records_.get();
  Span* whole = spans_.get();
  const bool lead = !growing_;
  if (lead) {
    growing_ = true;
    growing_spare_ = grow_bytes(units) - bytes;
  }
  mu_.unlock();

  Span* fresh = grow(units, seg, whole);
  Span* s = nullptr;
  if (fresh == nullptr) {
    // Refused. Idle memory may be holding the pages: the spans threads keep (which may also
    // serve this request), and our own fully free segments, which the kernel's pool gets back.
    reclaimer_.reclaim();
    mu_.lock();
    s = take_fit(units, requested, max_leftover);
    mu_.unlock();
    if (s == nullptr && release_free_segments() > 0) fresh = grow(units, seg, whole);
  }

  mu_.lock();
  // Records for carve() before the segment is published: ensure_records() may release the lock,
  // and a published free segment may be given back by another thread meanwhile.
  if (fresh != nullptr) (void)ensure_records();
  if (lead) growing_ = false;
  grown_.store(grown_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  const bool wake = waiters_ > 0;
  Doomed trimmed;
  if (fresh != nullptr) {
    backoff_.reset();
    // The segment grown before this one will not be the one filled next: its free tail goes back.
    // Only if it still is the newest: another thread may have grown one meanwhile, to be filled now.
    if (kind_ != PageKind::kHugetlb1G && newest != nullptr && segments_ == newest) trim_tail(newest, &trimmed);
    add_segment(fresh);
    free_.remove(fresh);
    s = carve(fresh, units, requested);  // from the new segment: it was grown for this request
    *from_cache = false;
  } else {
    if (seg != nullptr) segment_records_.put(seg);
    if (whole != nullptr) spans_.put(whole);
    if (s == nullptr) {
      ++stats_.num_map_failures;
      backoff_.refused(bytes);
      // No new memory: a span that leaves more unused than we would like is better than none.
      if (max_leftover != SIZE_MAX) s = take_fit(units, requested, SIZE_MAX);
    }
    if (s != nullptr) ++stats_.num_cache_hits;
  }
  if (s != nullptr) count_served(how);
  mu_.unlock();
  if (wake) futex_wake(&grown_, INT32_MAX);
  unmap_all(trimmed);
  return s;
}

// Maps a segment for `units`: the growth size first, then only what the request needs.
Span* SpanHeap::grow(size_t units, Segment* seg, Span* whole) {
  if (seg == nullptr || whole == nullptr) return nullptr;
  const size_t need = units * kUnit;
  struct Try {
    size_t head, tail;
  };
  Try tries[2];
  int count = 0;
  if (kind_ == PageKind::kHugetlb1G) {
    const size_t head = std::max(need / kGiB * kGiB, kGiB);
    const size_t rest = need - std::min(need, head);
    const size_t tail = (rest + k2MiB - 1) / k2MiB * k2MiB;
    tries[count++] = {head, tail};                    // 1 GiB pages, then 2 MiB pages for the rest
    if (tail > 0) tries[count++] = {head + kGiB, 0};  // without 2 MiB pages: one more 1 GiB page
  } else {
    if (need > SIZE_MAX - k2MiB) return nullptr;
    const size_t minimal = (need + k2MiB - 1) / k2MiB * k2MiB;
    if (minimal < kGrowBytes) tries[count++] = {kGrowBytes, 0};
    tries[count++] = {minimal, 0};
  }
  for (int i = 0; i < count; ++i) {
    MapResult r = kind_ == PageKind::kHugetlb1G ? source_.obtain_composite(tries[i].head, tries[i].tail, node_)
                                                : source_.obtain(kind_, tries[i].head, node_);
    if (r.addr == nullptr) continue;
    const uintptr_t start = reinterpret_cast<uintptr_t>(r.addr);
    const size_t size = tries[i].head + tries[i].tail;
    if (!map_.prepare(start, size) || !segment_map_.prepare(start, size)) {
      source_.unmap(r.addr, size);
      return nullptr;
    }
    whole->start.store(start, std::memory_order_relaxed);
    whole->units = size / kUnit;
    whole->segment = seg;
    whole->state.store(SpanState::kFree, std::memory_order_relaxed);
    seg->start = start;
    seg->size = size;
    seg->head_1g = kind_ == PageKind::kHugetlb1G ? tries[i].head : 0;
    seg->kind = kind_;
    seg->node = static_cast<int16_t>(node_);
    return whole;
  }
  return nullptr;
}

void SpanHeap::add_segment(Span* s) {
  Segment* seg = s->segment;
  seg->prev = nullptr;
  seg->next = segments_;
  if (segments_ != nullptr) segments_->prev = seg;
  segments_ = seg;
  stats_.reserved_bytes.add(static_cast<int64_t>(seg->size));
  ++stats_.num_maps;
  global_.reserved_bytes.add(static_cast<int64_t>(seg->size));
  segment_map_.set_range(seg->start, seg->size, seg);
  (void)map_.set(s->begin(), s);
  (void)map_.set(s->end() - 1, s);
  free_.push(s);
}

Span* SpanHeap::take_fit(size_t units, size_t requested, size_t max_leftover) {
  Span* s = free_.take(units);
  if (s == nullptr) return nullptr;
  if (s->units - units > max_leftover) {
    free_.push(s);
    return nullptr;
  }
  return carve(s, units, requested);
}

Span* SpanHeap::carve(Span* s, size_t units, size_t requested) {
  Span* rest = s->units > units ? spans_.get() : nullptr;  // none: out of records, s goes whole
  if (rest != nullptr) {
    rest->start.store(s->begin() + units * kUnit, std::memory_order_relaxed);
    rest->units = s->units - units;
    rest->segment = s->segment;
    rest->state.store(SpanState::kFree, std::memory_order_relaxed);
    (void)map_.set(rest->begin(), rest);
    (void)map_.set(rest->end() - 1, rest);
    free_.push(rest);
    s->units = units;
    (void)map_.set(s->end() - 1, s);
  }
  s->state.store(SpanState::kLarge, std::memory_order_release);
  s->requested = requested;
  s->fallback = false;  // the pool marks a span served against its request's preference
  stats_.allocated_bytes.add(static_cast<int64_t>(s->bytes()));
  stats_.slack_bytes.add(static_cast<int64_t>(s->bytes() - requested));
  ++stats_.num_allocs;
  span_bytes_.store(span_bytes_.load(std::memory_order_relaxed) + static_cast<int64_t>(s->bytes()),
                    std::memory_order_relaxed);
  return s;
}

bool SpanHeap::over_cap() const {
  const size_t cap = max_cached_.load(std::memory_order_relaxed);
  if (cap == SIZE_MAX) return false;
  const int64_t idle = idle_.idle_bytes();
  return idle > 0 && static_cast<uint64_t>(idle) > cap;
}

bool SpanHeap::whole_segment(const Span* s) const {
  return s->begin() == s->segment->start && s->bytes() == s->segment->size;
}

void SpanHeap::free_many(Span* const* spans, int n) {
  Doomed doomed;
  mu_.lock();
  for (int i = 0; i < n; ++i) {
    free_locked(spans[i], &doomed);
    if (doomed.full()) {  // rare: segments given back as their last spans come home
      mu_.unlock();
      unmap_all(doomed);
      doomed.count = 0;
      mu_.lock();
    }
  }
  mu_.unlock();
  unmap_all(doomed);
}

void SpanHeap::free_locked(Span* s, Doomed* doomed) {
  stats_.allocated_bytes.sub(static_cast<int64_t>(s->bytes()));
  stats_.slack_bytes.sub(static_cast<int64_t>(s->bytes() - s->requested));
  ++stats_.num_frees;
  span_bytes_.store(span_bytes_.load(std::memory_order_relaxed) - static_cast<int64_t>(s->bytes()),
                    std::memory_order_relaxed);
  s->state.store(SpanState::kFree, std::memory_order_release);
  s->requested = 0;
  Segment* seg = s->segment;
  if (s->begin() > seg->start) {
    Span* left = map_.get(s->begin() - 1);
    if (left != nullptr && left->segment == seg && left->state.load(std::memory_order_relaxed) == SpanState::kFree &&
        left->end() == s->begin()) {
      if (!seg->inherited) free_.remove(left);
      s->start.store(left->begin(), std::memory_order_relaxed);
      s->units += left->units;
      spans_.put(left);
    }
  }
  if (s->end() < seg->start + seg->size) {
    Span* right = map_.get(s->end());
    if (right != nullptr && right->segment == seg && right->state.load(std::memory_order_relaxed) == SpanState::kFree &&
        right->begin() == s->end()) {
      if (!seg->inherited) free_.remove(right);
      s->units += right->units;
      spans_.put(right);
    }
  }
  (void)map_.set(s->begin(), s);
  (void)map_.set(s->end() - 1, s);
  if (whole_segment(s) && (seg->inherited || over_cap())) {
    drop_segment(seg, s, doomed);
  } else if (!seg->inherited) {
    free_.push(s);
  }
}

size_t SpanHeap::release_free_segments() {
  size_t bytes = 0;
  for (;;) {
    Doomed doomed;
    mu_.lock();
    for (Segment* seg = segments_; seg != nullptr && !doomed.full();) {
      Segment* next = seg->next;
      Span* s = map_.get(seg->start);
      if (s != nullptr && s->segment == seg && s->state.load(std::memory_order_relaxed) == SpanState::kFree &&
          whole_segment(s)) {
        if (!seg->inherited) free_.remove(s);
        drop_segment(seg, s, &doomed);
      }
      seg = next;
    }
    if (kind_ != PageKind::kHugetlb1G)
      for (Segment* seg = segments_; seg != nullptr && !doomed.full(); seg = seg->next) trim_tail(seg, &doomed);
    if (doomed.count > 0) backoff_.reset();
    mu_.unlock();
    for (int i = 0; i < doomed.count; ++i) bytes += doomed.size[i];
    unmap_all(doomed);
    if (!doomed.full()) return bytes;
  }
}

void SpanHeap::drop_segment(Segment* seg, Span* s, Doomed* doomed) {
  // Forget the addresses before unmapping them: once unmapped, another allocator may be handed
  // the same range, and its pointers must find nothing in the map.
  map_.set_range(seg->start, seg->size, nullptr);
  segment_map_.set_range(seg->start, seg->size, nullptr);
  if (seg->prev != nullptr) seg->prev->next = seg->next; else segments_ = seg->next;
  if (seg->next != nullptr) seg->next->prev = seg->prev;
  stats_.reserved_bytes.sub(static_cast<int64_t>(seg->size));
  ++stats_.num_unmaps;
  global_.reserved_bytes.sub(static_cast<int64_t>(seg->size));
  doomed->add(seg->start, seg->size);
  s->start.store(0, std::memory_order_relaxed);
  spans_.put(s);
  segment_records_.put(seg);
}

void SpanHeap::trim_tail(Segment* seg, Doomed* doomed) {
  Span* s = map_.get(seg->start + seg->size - 1);
  if (s == nullptr || s->segment != seg || s->state.load(std::memory_order_relaxed) != SpanState::kFree ||
      s->end() != seg->start + seg->size || seg->inherited)
    return;
  const uintptr_t cut = (s->begin() + k2MiB - 1) & ~(uintptr_t{k2MiB} - 1);  // whole huge pages only
  const uintptr_t end = seg->start + seg->size;
  if (cut >= end) return;
  if (cut == seg->start) {  // the segment is all free: it goes whole
    free_.remove(s);
    drop_segment(seg, s, doomed);
    return;
  }
  free_.remove(s);
  map_.set_range(cut, end - cut, nullptr);
  segment_map_.set_range(cut, end - cut, nullptr);
  if (cut > s->begin()) {
    s->units = (cut - s->begin()) / kUnit;
    (void)map_.set(s->end() - 1, s);
    free_.push(s);
  } else {
    s->start.store(0, std::memory_order_relaxed);
    spans_.put(s);
  }
  seg->size = cut - seg->start;
  stats_.reserved_bytes.sub(static_cast<int64_t>(end - cut));
  ++stats_.num_unmaps;
  global_.reserved_bytes.sub(static_cast<int64_t>(end - cut));
  doomed->add(cut, end - cut);
}

void SpanHeap::unmap_all(const Doomed& doomed) {
  for (int i = 0; i < doomed.count; ++i) source_.unmap(reinterpret_cast<void*>(doomed.start[i]), doomed.size[i]);
}

void SpanHeap::forget_after_fork() {
  // Note [Fork]: the free space of every segment mapped so far is shared copy-on-write with the
  // parent; reusing it would copy pages on write, and with no huge page free for the copy the
  // kernel kills the writer with SIGBUS. So the child never reuses it: inherited segments leave
  // the free lists, and each is unmapped once all its blocks are freed here.
  for (;;) {
    Doomed doomed;
    for (Segment* seg = segments_; seg != nullptr && !doomed.full();) {
      Segment* next = seg->next;
      seg->inherited = true;
      Span* s = map_.get(seg->start);
      if (s != nullptr && s->segment == seg && s->state.load(std::memory_order_relaxed) == SpanState::kFree &&
          whole_segment(s))
        drop_segment(seg, s, &doomed);  // idle at fork: nothing of it is needed here
      seg = next;
    }
    unmap_all(doomed);
    if (!doomed.full()) break;
  }
  free_ = FreeSpans();
  backoff_.reset();
  // A growth in flight at fork() belongs to a thread that does not exist here: nobody would wake
  // a waiter, or clear the flag.
  growing_ = false;
  growing_spare_ = 0;
  waiters_ = 0;
}

PoolStats SpanHeap::stats() const {
  std::lock_guard<Lock> lock(mu_);
  return stats_;
}

void SpanHeap::reset_peaks() {
  std::lock_guard<Lock> lock(mu_);
  stats_.reset_peaks();
}

}  // namespace hpa
