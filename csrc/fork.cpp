#include "fork_copy.h"

#include <cstdlib>
#include <string>

#include "pool.h"

namespace hpa {
namespace {

// Free huge pages of a size that a new fault may take (free and not promised to a reservation).
// Reserved pages are free pages, so resv_hugepages never exceeds free_hugepages; a larger value is
// the kernel's counter gone below zero (seen on Linux 6.18 as 18446744073709551605) and is read
// as no reservation.
int64_t unreserved_free(Os& os, const char* size_dir) {
  std::string free_text, resv_text;
  const std::string base = std::string("/sys/kernel/mm/hugepages/") + size_dir + "/";
  if (os.read_file((base + "free_hugepages").c_str(), &free_text) != 0) return 0;
  if (os.read_file((base + "resv_hugepages").c_str(), &resv_text) != 0) return 0;
  const unsigned long long free = std::strtoull(free_text.c_str(), nullptr, 10);
  const unsigned long long resv = std::strtoull(resv_text.c_str(), nullptr, 10);
  return static_cast<int64_t>(resv <= free ? free - resv : free);
}

// Free huge pages of a size on one node (the kernel keeps no per-node count of reservations).
int64_t node_free(Os& os, int node, const char* size_dir) {
  std::string text;
  const std::string path = "/sys/devices/system/node/node" + std::to_string(node) + "/hugepages/" +
                           size_dir + "/free_hugepages";
  if (os.read_file(path.c_str(), &text) != 0) return 0;
  return std::strtoll(text.c_str(), nullptr, 10);
}

// Whether the free pages can cover a copy of every hugetlb page the pool has mapped. A segment
// bound to a node takes its copies from that node (the mapping's policy), so on a machine of
// several nodes each node must cover its own heaps too.
bool copies_covered(Os& os, const Pool& pool) {
  const HugetlbPages mapped = pool.hugetlb_pages();
  if (unreserved_free(os, "hugepages-2048kB") < mapped.pages_2m ||
      (mapped.pages_1g > 0 && unreserved_free(os, "hugepages-1048576kB") < mapped.pages_1g))
    return false;
  if (pool.topology().num_nodes() == 1) return true;
  for (int node : pool.topology().nodes()) {
    const HugetlbPages on = pool.hugetlb_pages(node);
    if ((on.pages_2m > 0 && node_free(os, node, "hugepages-2048kB") < on.pages_2m) ||
        (on.pages_1g > 0 && node_free(os, node, "hugepages-1048576kB") < on.pages_1g))
      return false;
  }
  return true;
}

}  // namespace

void ForkCopies::prepare(Pool& pool) {
  copies_.clear();
  copied_bytes_ = 0;
  const HugetlbPages mapped = pool.hugetlb_pages();
  if (mapped.pages_2m == 0 && mapped.pages_1g == 0) return;
  if (copies_covered(os_, pool)) return;  // every copy-on-write the parent could cause finds a page
  bool failed = false;
  pool.for_each_live_hugetlb_range([&](uintptr_t begin, size_t size) {
    if (failed) return;
    void* target = reinterpret_cast<void*>(begin);
    MapResult r = os_.map_copy(target, size);
    if (r.addr == nullptr) {
      failed = true;
      return;
    }
    copies_.push_back({target, r.addr, size});
    copied_bytes_ += size;
  });
  if (failed) drop();
}

void ForkCopies::drop() {
  for (const Copy& c : copies_) os_.unmap(c.copy, c.size);
  copies_.clear();
  copied_bytes_ = 0;
}

void ForkCopies::in_parent() {
  for (const Copy& c : copies_) os_.unmap(c.copy, c.size);
  copies_.clear();
}

void ForkCopies::in_child() {
  for (const Copy& c : copies_) (void)os_.move_mapping(c.copy, c.target, c.size);
  copies_.clear();
}

}  // namespace hpa
