#include "span_heap.h"


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

SpanHeap::SpanHeap(PageKind kind, int node, PageSource& source, AddressMaps& maps,
                   GlobalStats& global, const std::atomic<size_t>& max_cached, const IdleGauge& idle)
    : kind_(kind),
      node_(node),
      source_(source),
      map_(maps.spans),
      segment_map_(maps.segments),
      global_(global),
      max_cached_(max_cached),
      idle_(idle) {}

SpanHeap::~SpanHeap() {
  for (Segment* seg = segments_; seg != nullptr; seg = seg->next)
    source_.unmap(reinterpret_cast<void*>(seg->start), seg->size);
}

Span* SpanHeap::allocate(size_t units, size_t requested, size_t max_leftover, bool force, uint8_t how,
                         bool* from_cache) {
  const size_t bytes = units * kUnit;
  std::unique_lock<SpinLock> lock(mu_);
  if (Span* s = take_fit(units, requested, max_leftover)) {
    *from_cache = true;
    ++stats_.num_cache_hits;
    count_served(how);
    return s;
  }
  if (!force && backoff_.skip(bytes)) return nullptr;
  Segment* const newest = segments_;  // the segment that could not serve this request
  lock.unlock();
  Span* fresh = grow(units);
  lock.lock();
  if (fresh == nullptr) {
    ++stats_.num_map_failures;
    backoff_.refused(bytes);
    // No new memory: a span that leaves more unused than we would like is better than none.
    Span* s = max_leftover == SIZE_MAX ? nullptr : take_fit(units, requested, SIZE_MAX);
    if (s != nullptr) {
      *from_cache = true;
      ++stats_.num_cache_hits;
      count_served(how);
    }
    return s;
  }
  backoff_.reset();
  // The segment grown before this one will not be the one filled next: its free tail goes back.
  // Only if it still is the newest: another thread may have grown one meanwhile, to be filled now.
  std::vector<Segment> trimmed;
  if (kind_ != PageKind::kHugetlb1G && newest != nullptr && segments_ == newest) trim_tail(newest, &trimmed);
  add_segment(fresh);
  *from_cache = false;
  free_.remove(fresh);
  Span* s = carve(fresh, units, requested);  // from the new segment: it was grown for this request
  if (s != nullptr) count_served(how);
  lock.unlock();
  unmap_all(trimmed);
  return s;
}

Span* SpanHeap::grow(size_t units) {
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
  for (int pass = 0; pass < 2; ++pass) {
    for (int i = 0; i < count; ++i) {
      MapResult r = kind_ == PageKind::kHugetlb1G
                        ? source_.obtain_composite(tries[i].head, tries[i].tail, node_)
                        : source_.obtain(kind_, tries[i].head, node_);
      if (r.addr == nullptr) continue;
      const uintptr_t start = reinterpret_cast<uintptr_t>(r.addr);
      const size_t size = tries[i].head + tries[i].tail;
      std::lock_guard<SpinLock> lock(mu_);
      Segment* seg = segment_records_.get();
      Span* whole = spans_.get();
      if (seg == nullptr || whole == nullptr || !map_.prepare(start, size) ||
          !segment_map_.prepare(start, size)) {
        if (seg != nullptr) segment_records_.put(seg);
        if (whole != nullptr) spans_.put(whole);
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
    // Refused: the kernel's pool may be holding our own idle pages. Give them back, once.
    if (pass == 0 && release_free_segments() == 0) break;
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
  stats_.allocated_bytes.add(static_cast<int64_t>(s->bytes()));
  stats_.slack_bytes.add(static_cast<int64_t>(s->bytes() - requested));
  ++stats_.num_allocs;
  span_bytes_.store(span_bytes_.load(std::memory_order_relaxed) + static_cast<int64_t>(s->bytes()),
                    std::memory_order_relaxed);
  return s;
}

bool SpanHeap::over_cap() const {
  const size_t cap = max_cached_.load(std::memory_order_relaxed);
  const int64_t idle = idle_.idle_bytes();
  return cap != SIZE_MAX && idle > 0 && static_cast<uint64_t>(idle) > cap;
}

bool SpanHeap::whole_segment(const Span* s) const {
  return s->begin() == s->segment->start && s->bytes() == s->segment->size;
}

void SpanHeap::free(Span* s) {
  std::vector<Segment> doomed;
  {
    std::lock_guard<SpinLock> lock(mu_);
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
      drop_segment(seg, s, &doomed);
    } else if (!seg->inherited) {
      free_.push(s);
    }
  }
  unmap_all(doomed);
}

size_t SpanHeap::release_free_segments() {
  std::vector<Segment> doomed;
  {
    std::lock_guard<SpinLock> lock(mu_);
    for (Segment* seg = segments_; seg != nullptr;) {
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
      for (Segment* seg = segments_; seg != nullptr; seg = seg->next) trim_tail(seg, &doomed);
    if (!doomed.empty()) backoff_.reset();
  }
  size_t bytes = 0;
  for (const Segment& seg : doomed) bytes += seg.size;
  unmap_all(doomed);
  return bytes;
}

void SpanHeap::drop_segment(Segment* seg, Span* s, std::vector<Segment>* doomed) {
  // Forget the addresses before unmapping them: once unmapped, another allocator may be handed
  // the same range, and its pointers must find nothing in the map.
  map_.set_range(seg->start, seg->size, nullptr);
  segment_map_.set_range(seg->start, seg->size, nullptr);
  if (seg->prev != nullptr) seg->prev->next = seg->next; else segments_ = seg->next;
  if (seg->next != nullptr) seg->next->prev = seg->prev;
  stats_.reserved_bytes.sub(static_cast<int64_t>(seg->size));
  ++stats_.num_unmaps;
  global_.reserved_bytes.sub(static_cast<int64_t>(seg->size));
  doomed->push_back(*seg);
  s->start.store(0, std::memory_order_relaxed);
  spans_.put(s);
  segment_records_.put(seg);
}

void SpanHeap::trim_tail(Segment* seg, std::vector<Segment>* doomed) {
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
  Segment tail;
  tail.start = cut;
  tail.size = end - cut;
  doomed->push_back(tail);
}

void SpanHeap::unmap_all(std::vector<Segment>& doomed) {
  for (const Segment& seg : doomed) source_.unmap(reinterpret_cast<void*>(seg.start), seg.size);
}

void SpanHeap::forget_after_fork() {
  // Note [Fork]: the free space of every segment mapped so far is shared copy-on-write with the
  // parent; reusing it would copy pages on write, and with no huge page free for the copy the
  // kernel kills the writer with SIGBUS. So the child never reuses it: inherited segments leave
  // the free lists, and each is unmapped once all its blocks are freed here.
  std::vector<Segment> doomed;
  for (Segment* seg = segments_; seg != nullptr;) {
    Segment* next = seg->next;
    seg->inherited = true;
    Span* s = map_.get(seg->start);
    if (s != nullptr && s->segment == seg && s->state.load(std::memory_order_relaxed) == SpanState::kFree &&
        whole_segment(s))
      drop_segment(seg, s, &doomed);  // idle at fork: nothing of it is needed here
    seg = next;
  }
  free_ = FreeSpans();
  backoff_.reset();
  unmap_all(doomed);
}

PoolStats SpanHeap::stats() const {
  std::lock_guard<SpinLock> lock(mu_);
  return stats_;
}

void SpanHeap::reset_peaks() {
  std::lock_guard<SpinLock> lock(mu_);
  stats_.reset_peaks();
}

}  // namespace hpa
