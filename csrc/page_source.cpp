#include "page_source.h"

#include <cerrno>
#include <string>

namespace hpa {

PageSource::PageSource(Os& os, const Topology& topology) : os_(os), topology_(topology) {
  std::string mode;
  if (os_.read_file("/sys/kernel/mm/transparent_hugepage/enabled", &mode) != 0 ||
      mode.find("[never]") != std::string::npos) {
    disabled_[static_cast<int>(PageKind::kThp)].store(true, std::memory_order_relaxed);
    last_error_[static_cast<int>(PageKind::kThp)].store(EOPNOTSUPP, std::memory_order_relaxed);
  }
}

MapResult PageSource::obtain(PageKind kind, size_t size, int node) {
  const int k = static_cast<int>(kind);
  if (!usable(kind)) return {nullptr, last_error(kind)};
  MapResult r = os_.map(kind, size);
  if (r.addr == nullptr) {
    // EINVAL from a hugetlb mmap means the kernel lacks this page size; anything else (ENOMEM
    // above all) may change when pages are freed or reserved.
    if (r.error == EINVAL && is_hugetlb(kind)) disabled_[k].store(true, std::memory_order_relaxed);
    last_error_[k].store(r.error, std::memory_order_relaxed);
    return r;
  }
  return finish(kind, r, size, node);
}

MapResult PageSource::obtain_composite(size_t head, size_t tail, int node) {
  const PageKind kind = PageKind::kHugetlb1G;
  const int k = static_cast<int>(kind);
  if (!usable(kind) || (tail > 0 && !usable(PageKind::kHugetlb2M))) return {nullptr, last_error(kind)};
  MapResult r = os_.map_composite(head, tail);
  if (r.addr == nullptr) {
    last_error_[k].store(r.error, std::memory_order_relaxed);
    return r;
  }
  return finish(kind, r, head + tail, node);
}

MapResult PageSource::finish(PageKind kind, MapResult r, size_t size, int node) {
  const int k = static_cast<int>(kind);
  // Binding matters only where there is a choice; a one-node system skips the system call.
  if (topology_.num_nodes() > 1 && binding_usable()) {
    int err;
    if (node == kInterleaveNode) {
      const NodeMask nodes = interleave_nodes_.load(std::memory_order_relaxed);
      err = os_.set_policy(r.addr, size, MemPolicy::kInterleave, nodes != 0 ? nodes : topology_.node_mask());
    } else {
      const bool strict = is_hugetlb(kind) || strict_fallback_.load(std::memory_order_relaxed);
      err = os_.set_policy(r.addr, size, strict ? MemPolicy::kBind : MemPolicy::kPreferred, node_bit(node));
    }
    // A sandbox that forbids mbind (EPERM, ENOSYS) leaves placement to the kernel from now on.
    if (err == EPERM || err == ENOSYS) binding_usable_.store(false, std::memory_order_relaxed);
  }
  if (is_hugetlb(kind)) {
    const int err = os_.populate(r.addr, size);  // Note [No SIGBUS]
    if (err != 0) {
      os_.unmap(r.addr, size);
      if (err == EINVAL) disabled_[k].store(true, std::memory_order_relaxed);
      last_error_[k].store(err, std::memory_order_relaxed);
      return {nullptr, err};
    }
  }
  last_error_[k].store(0, std::memory_order_relaxed);  // the error of a refusal, not of placement
  return r;
}

}  // namespace hpa
