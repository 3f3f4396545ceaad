// What happens to the pool at fork(), in the parent and in the child: this file owns the whole
// sequence; the pool's structures only provide the steps (lock_all, unlock_all,
// forget_after_fork, the live hugetlb ranges).
//
// Note [Fork]
// After fork() the child shares every page mapped so far with its parent, copy-on-write.
// 1. Locks. Every lock of the pool is taken before fork() and released after it in both
//    processes, so that no lock is inherited held by a thread that does not exist in the child
//    (DataLoader workers fork while other threads allocate).
// 2. The child never reuses inherited memory. Writing to a shared page copies it, and for
//    hugetlb memory with no free huge page for the copy the kernel kills the writer with SIGBUS.
//    The allocator's own reuse would be such a write (a free-list link, a new block's data), so
//    the child forgets all cached memory: inherited segments are marked `inherited`, leave the
//    free lists, are never cut again, and are unmapped as soon as their last block is freed
//    there; segments idle at fork() are unmapped at once (Pool::forget_after_fork). Blocks the
//    child inherited stay valid and are freed normally, with no write to their memory.
// 3. The parent's writes (Note [Fork copies], below).
// 4. Shared regions (Note [Shared memory], shared_memory.h) are MAP_SHARED, so no copy-on-write
//    concerns them; the child drops the idle ones, which are its parent's to reuse.
//
// Note [Fork copies]
// After fork() every MAP_PRIVATE hugetlb page is shared copy-on-write, and a write by either
// process needs a free huge page for its copy. The parent is the mapping's reservation owner: when
// its copy finds no free page, the kernel unmaps the page from the child (mm/hugetlb.c,
// unmap_ref_private) and the child dies of SIGBUS ("killed due to inadequate hugepage pool") the
// next time it touches it. So a parent that updates its weights while a forked child reads them
// kills the child whenever the pool is dry.
//
// Before fork() (all pool locks held), the parent counts the hugetlb pages it has mapped, which
// are all the copies its writes could need, against the kernel's free unreserved pages of each
// size (and, on a machine of several nodes, each node's heaps against that node's free pages: a
// bound segment's copies come from its node). If they suffice, nothing is done: the child shares
// the pages, and the common case costs a few small sysfs reads per fork. If not, every huge page
// that holds a block in use is copied onto ordinary anonymous memory (THP-advised) before fork();
// after fork() the child moves each copy over the hugetlb range at the same address (mremap), so
// it holds private pages that no copy-on-write concerns, and the parent unmaps its side. The
// parent's pages are no longer shared, so its writes need no copy. Cost, only then: a copy of the
// live hugetlb memory per fork, and the child's view of that memory is on ordinary pages.
// Rejected: MADV_DONTFORK (the child loses the memory: DataLoader workers read the parent's
// tensors), MAP_SHARED (a child's write would land in the parent's tensor), copying in the child
// after fork() (the parent's other threads may write first, and the child's read of an unmapped
// page is the SIGBUS itself).
// Not covered: another process taking the free pages after a fork that found enough of them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "os.h"

namespace hpa {

class Pool;
class SharedMemory;

class ForkHandler {
 public:
  // `shared`: the process's shared regions (Note [Shared memory]), locked with the pool and
  // forgotten by the child; nullptr for a test pool.
  ForkHandler(Os& os, Pool& pool, SharedMemory* shared = nullptr) : os_(os), pool_(pool), shared_(shared) {}
  ForkHandler(const ForkHandler&) = delete;
  ForkHandler& operator=(const ForkHandler&) = delete;

  // Registers before() / in_parent() / in_child() of `handler` with pthread_atfork. Once per
  // process, for the process allocator's pool; `handler` must live for the rest of the process.
  static void register_atfork(ForkHandler* handler);

  // In the parent, just before fork(): takes every pool lock, then decides on and, if needed,
  // makes the copies (Note [Fork copies]). Best effort: when a copy cannot be made, the ones made
  // are dropped and the child shares the pages.
  void before();
  // In the parent, after fork(): unmaps the parent's side of the copies, releases the locks.
  void in_parent();
  // In the child, after fork() (one thread): moves each copy over its hugetlb range, releases
  // the locks, and forgets inherited memory (Note [Fork]).
  void in_child();

  size_t copied_bytes() const { return copied_bytes_; }  // by the last fork

 private:
  struct Copy {
    void* target;  // the hugetlb range
    void* copy;    // the anonymous copy
    size_t size;
  };
  bool copies_covered() const;  // REQUIRES: pool locked
  void make_copies();           // REQUIRES: pool locked
  void drop_copies();

  Os& os_;
  Pool& pool_;
  SharedMemory* shared_;
  std::vector<Copy> copies_;
  size_t copied_bytes_ = 0;
};

}  // namespace hpa
