// Copies, made at fork(), of the parent's live hugetlb memory for the child, when the kernel could
// not cover the copies that copy-on-write would need.
//
// Note [Fork copies]
// After fork() every MAP_PRIVATE hugetlb page is shared copy-on-write, and a write by either
// process needs a free huge page for its copy. The parent is the mapping's reservation owner: when
// its copy finds no free page, the kernel unmaps the page from the child (mm/hugetlb.c,
// unmap_ref_private) and the child dies of SIGBUS ("killed due to inadequate hugepage pool") the
// next time it touches it. So a parent that updates its weights while a forked child reads them
// kills the child whenever the pool is dry. The child's own allocations never write inherited
// memory (Note [Fork], pool.h); this covers the parent's writes.
//
// In the prepare handler (all pool locks held), the parent counts the hugetlb pages it has mapped,
// which are all the copies its writes could need, against the kernel's free unreserved pages of
// each size (and, on a machine of several nodes, each node's heaps against that node's free
// pages: a bound segment's copies come from its node). If they suffice, nothing is done: the
// child shares the pages, and the common case costs a few small sysfs reads per fork. If not, every huge page that holds a block in use is
// copied onto ordinary anonymous memory (THP-advised) before fork(); after fork() the child moves
// each copy over the hugetlb range at the same address (mremap), so it holds private pages that no
// copy-on-write concerns, and the parent unmaps its side. The parent's pages are no longer shared,
// so its writes need no copy. Cost, only then: a copy of the live hugetlb memory per fork, and the
// child's view of that memory is on ordinary pages. Rejected: MADV_DONTFORK (the child loses the
// memory: DataLoader workers read the parent's tensors), MAP_SHARED (a child's write would land in
// the parent's tensor), copying in the child after fork() (the parent's other threads may write
// first, and the child's read of an unmapped page is the SIGBUS itself).
// Not covered: another process taking the free pages after a fork that found enough of them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "os.h"

namespace hpa {

class Pool;

class ForkCopies {
 public:
  explicit ForkCopies(Os& os) : os_(os) {}

  // Before fork(), pool locked: decides and, if needed, makes the copies. Best effort: when a copy
  // cannot be made, the ones made are dropped and the child shares the pages.
  void prepare(Pool& pool);
  void in_parent();  // after fork(): unmaps the parent's side of the copies
  void in_child();   // after fork(): moves each copy over its hugetlb range
  size_t copied_bytes() const { return copied_bytes_; }  // by the last fork

 private:
  struct Copy {
    void* target;  // the hugetlb range
    void* copy;    // the anonymous copy
    size_t size;
  };
  void drop();
  Os& os_;
  std::vector<Copy> copies_;
  size_t copied_bytes_ = 0;
};

}  // namespace hpa
