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

#include <atomic>
#include <cstddef>

#include "os.h"
#include "placement.h"
#include "topology.h"

namespace hpa {

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

  int unmap(void* addr, size_t size) { return os_.unmap(addr, size); }

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
};

}  // namespace hpa
