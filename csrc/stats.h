// Statistics of the pool, named like torch.cuda.memory_stats(): every byte stat is a
// {current, peak, allocated, freed} quadruple ("allocated"/"freed" are running totals).
// The field lists are written once here and expanded into the structs, the Python dict and the
// summary table.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace hpa {

// Byte statistics kept per (node, page kind), by each span heap:
//   allocated_bytes: bytes of spans handed out (large blocks, and slabs of small objects, whole)
//   reserved_bytes:  bytes mapped from the kernel, handed out or cached
//   slack_bytes:     bytes of large spans beyond what was requested (a span is whole 64 KiB units)
// The process-wide "all" figure of allocated_bytes counts what callers hold instead: large blocks
// and small objects, each by its span or size class (Note [Thread statistics], thread_cache.h).
#define HPA_BYTE_STATS(X) \
  X(allocated_bytes)      \
  X(reserved_bytes)       \
  X(slack_bytes)

// Event counters, kept per (node, page kind).
//   num_allocs:       spans handed out
//   num_frees:        spans given back to the heap
//   num_cache_hits:   spans cut from memory already mapped (no system call, no fault)
//   num_maps:         fresh mappings (segments) taken from the kernel
//   num_unmaps:       segments given back to the kernel
//   num_map_failures: times the kernel refused to grow the heap (an empty hugetlb pool, a cgroup limit)
//   num_fallbacks:    spans served by this kind although a preferred kind was tried first
//   num_node_fallbacks: spans served on this node for a request whose home node had no
//                     explicit huge page left (see placement.h)
#define HPA_EVENT_STATS(X) \
  X(num_allocs)            \
  X(num_frees)             \
  X(num_cache_hits)        \
  X(num_maps)              \
  X(num_unmaps)            \
  X(num_map_failures)      \
  X(num_fallbacks)         \
  X(num_node_fallbacks)

struct ByteStat {
  int64_t current = 0;
  int64_t peak = 0;
  int64_t allocated = 0;
  int64_t freed = 0;

  void add(int64_t n) {
    current += n;
    allocated += n;
    peak = std::max(peak, current);
  }
  void sub(int64_t n) {
    current -= n;
    freed += n;
  }
  void merge(const ByteStat& o) {  // sums; a sum of peaks is an upper bound, not a peak
    current += o.current;
    peak += o.peak;
    allocated += o.allocated;
    freed += o.freed;
  }
};

// A process-wide byte stat updated without a lock: current, peak, and the running total freed
// (the running total allocated is current + freed).
struct AtomicPeakStat {
  std::atomic<int64_t> current{0};
  std::atomic<int64_t> peak{0};
  std::atomic<int64_t> freed{0};

  void add(int64_t n) {
    const int64_t now = current.fetch_add(n, std::memory_order_relaxed) + n;
    int64_t seen = peak.load(std::memory_order_relaxed);
    while (now > seen && !peak.compare_exchange_weak(seen, now, std::memory_order_relaxed)) {
    }
  }
  void sub(int64_t n) {
    current.fetch_sub(n, std::memory_order_relaxed);
    freed.fetch_add(n, std::memory_order_relaxed);
  }
  void reset_peak() { peak.store(current.load(std::memory_order_relaxed), std::memory_order_relaxed); }
  ByteStat snapshot() const {
    ByteStat s;
    s.current = current.load(std::memory_order_relaxed);
    s.peak = peak.load(std::memory_order_relaxed);
    s.freed = freed.load(std::memory_order_relaxed);
    s.allocated = s.current + s.freed;
    return s;
  }
};

struct PoolStats {
#define HPA_DECLARE_BYTE(name) ByteStat name;
  HPA_BYTE_STATS(HPA_DECLARE_BYTE)
#undef HPA_DECLARE_BYTE
#define HPA_DECLARE_EVENT(name) int64_t name = 0;
  HPA_EVENT_STATS(HPA_DECLARE_EVENT)
#undef HPA_DECLARE_EVENT

  void merge(const PoolStats& o) {
#define HPA_MERGE_BYTE(name) name.merge(o.name);
    HPA_BYTE_STATS(HPA_MERGE_BYTE)
#undef HPA_MERGE_BYTE
#define HPA_MERGE_EVENT(name) name += o.name;
    HPA_EVENT_STATS(HPA_MERGE_EVENT)
#undef HPA_MERGE_EVENT
  }
  void reset_peaks() {
#define HPA_RESET_BYTE(name) name.peak = name.current;
    HPA_BYTE_STATS(HPA_RESET_BYTE)
#undef HPA_RESET_BYTE
  }
};

}  // namespace hpa
