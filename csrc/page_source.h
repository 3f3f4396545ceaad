// Where fresh memory comes from: one mapping of a chosen page kind, bound to a NUMA node and,
// for hugetlb, faulted in before anyone touches it.
//
// Note [No SIGBUS]
// A hugetlb mapping is never MAP_NORESERVE, so the kernel reserves its pages at mmap time and an
// empty pool is ENOMEM there. A reservation is not the whole story: a hugetlb cgroup limit (what
// containers set) is charged when a page is faulted in, and a plain first touch beyond it raises
// SIGBUS. So every fresh hugetlb mapping is populated with MADV_POPULATE_WRITE, which reports the
// same condition as an error; the mapping is then dropped and the caller falls back. A kernel
// without MADV_POPULATE_WRITE (before 5.14) cannot give that guarantee: hugetlb is then switched
// off for the process (sticky) rather than risk the signal.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <utility>

#include "os.h"
#include "page_map.h"
#include "placement.h"
#include "topology.h"

namespace hpa {

// The last kSlots ranges the pool gave back to the kernel, kept lock-free (one word per range) for
// the deleter's diagnosis of a pointer that is no longer ours (Note [Foreign pointers],
// allocator.h). Older ranges are forgotten: the record says "we unmapped this", never "we did not".
class RetiredRanges {
 public:
  static constexpr int kSlots = 64;
  // REQUIRES: start and size multiples of 64 KiB, start below 2^48.
  void add(uintptr_t start, size_t size) {
    const uint64_t units = std::min<uint64_t>(size >> kUnitShift, UINT32_MAX);
    const uint64_t word = (static_cast<uint64_t>(start >> kUnitShift) << 32) | units;
    slots_[next_.fetch_add(1, std::memory_order_relaxed) % kSlots].store(word, std::memory_order_release);
  }
  // The recorded range holding `addr`, as {start, size}; {0, 0} when none does.
  std::pair<uintptr_t, size_t> find(uintptr_t addr) const {
    for (const auto& slot : slots_) {
      const uint64_t word = slot.load(std::memory_order_acquire);
      const uintptr_t start = static_cast<uintptr_t>(word >> 32) << kUnitShift;
      const size_t size = static_cast<size_t>(word & UINT32_MAX) << kUnitShift;
      if (size != 0 && addr >= start && addr - start < size) return {start, size};
    }
    return {0, 0};
  }

 private:
  std::atomic<uint64_t> slots_[kSlots] = {};
  std::atomic<uint32_t> next_{0};
};

class PageSource {
 public:
  // Reads the THP mode once: with transparent huge pages set to "never", the THP kind would be
  // ordinary pages under another name, so it is marked unusable.
  PageSource(Os& os, const Topology& topology);

  // Maps `size` bytes (a multiple of page_kind_unit(kind)) of `kind` for `node` (kInterleaveNode:
  // interleaved over the interleave nodes). Hugetlb memory is bound to the node strictly, so that
  // a node whose pool is empty refuses here (and the caller may try another node) instead of
  // taking another node's pages silently; it comes back populated. THP and base memory prefers
  // the node (binds it, under strict_fallback) and is faulted lazily by its first user.
  // On failure returns {nullptr, errno} and leaves nothing mapped.
  MapResult obtain(PageKind kind, size_t size, int node);

  // One range of `head` bytes of 1 GiB pages followed by `tail` bytes of 2 MiB pages, populated.
  // Failures are recorded against the 1 GiB kind.
  MapResult obtain_composite(size_t head, size_t tail, int node);

  // Gives a range (or a 2 MiB aligned tail of one) back to the kernel, and remembers it.
  int unmap(void* addr, size_t size) {
    retired_.add(reinterpret_cast<uintptr_t>(addr), size);
    return os_.unmap(addr, size);
  }
  const RetiredRanges& retired() const { return retired_; }

  // How memory mapped from now on is bound: THP and base memory to its node only (`strict`, for
  // bind placements) or preferably; interleaved memory over `interleave_nodes`.
  void set_binding(bool strict, NodeMask interleave_nodes) {
    strict_fallback_.store(strict, std::memory_order_relaxed);
    interleave_nodes_.store(interleave_nodes, std::memory_order_relaxed);
  }
  // False once mbind was refused outright (EPERM, ENOSYS: a sandbox): placement is then the
  // kernel's.
  bool binding_usable() const { return binding_usable_.load(std::memory_order_relaxed); }

  // False once the kernel showed it cannot provide this kind at all (EINVAL: unsupported page
  // size, no MADV_POPULATE_WRITE). Distinct from a pool that is merely empty.
  bool usable(PageKind kind) const {
    return !disabled_[static_cast<int>(kind)].load(std::memory_order_relaxed);
  }
  // The errno of the last failure of this kind, 0 if none.
  int last_error(PageKind kind) const {
    return last_error_[static_cast<int>(kind)].load(std::memory_order_relaxed);
  }

 private:
  // Binds and populates a fresh mapping; on failure unmaps it and records the error.
  MapResult finish(PageKind kind, MapResult r, size_t size, int node);

  Os& os_;
  const Topology& topology_;
  std::atomic<bool> disabled_[kNumPageKinds] = {};
  std::atomic<int> last_error_[kNumPageKinds] = {};
  std::atomic<bool> strict_fallback_{false};
  std::atomic<NodeMask> interleave_nodes_{0};
  std::atomic<bool> binding_usable_{true};
  RetiredRanges retired_;
};

}  // namespace hpa
