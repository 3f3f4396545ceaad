#include "fork.h"

#include <pthread.h>

#include "pool.h"
#include "shared_memory.h"

namespace hpa {

void ForkHandler::register_atfork(ForkHandler* handler) {
  static ForkHandler* registered = nullptr;  // pthread_atfork takes plain functions
  registered = handler;
  pthread_atfork([] { registered->before(); }, [] { registered->in_parent(); },
                 [] { registered->in_child(); });
}

// The fork handlers read the kernel's free page counts and copy memory with every pool lock held:
// other threads wait for the fork anyway (Note [Lock checks], sync.h).
void ForkHandler::before() {
  LockCheckExemption exempt;
  if (shared_ != nullptr) shared_->lock();
  pool_.lock_all();
  copies_.clear();
  copied_bytes_ = 0;
  const HugetlbPages mapped = pool_.hugetlb_pages();
  if (mapped.pages_2m == 0 && mapped.pages_1g == 0) return;
  if (copies_covered()) return;  // every copy-on-write the parent could cause finds a page
  make_copies();
}

void ForkHandler::in_parent() {
  LockCheckExemption exempt;
  drop_copies();
  pool_.unlock_all();
  if (shared_ != nullptr) shared_->unlock();
}

void ForkHandler::in_child() {
  LockCheckExemption exempt;
  for (const Copy& c : copies_) (void)os_.move_mapping(c.copy, c.target, c.size);
  copies_.clear();
  pool_.unlock_all();
  pool_.forget_after_fork();
  if (shared_ != nullptr) {
    shared_->unlock();
    shared_->forget_after_fork();
  }
}

// Whether the free pages can cover a copy of every hugetlb page the pool has mapped. A segment
// bound to a node takes its copies from that node (the mapping's policy), so on a machine of
// several nodes each node must cover its own heaps too.
bool ForkHandler::copies_covered() const {
  const HugetlbPages mapped = pool_.hugetlb_pages();
  if (os_.hugetlb_free(PageKind::kHugetlb2M, -1) < mapped.pages_2m ||
      (mapped.pages_1g > 0 && os_.hugetlb_free(PageKind::kHugetlb1G, -1) < mapped.pages_1g))
    return false;
  if (pool_.topology().num_nodes() == 1) return true;
  for (int node : pool_.topology().nodes()) {
    const HugetlbPages on = pool_.hugetlb_pages(node);
    if ((on.pages_2m > 0 && os_.hugetlb_free(PageKind::kHugetlb2M, node) < on.pages_2m) ||
        (on.pages_1g > 0 && os_.hugetlb_free(PageKind::kHugetlb1G, node) < on.pages_1g))
      return false;
  }
  return true;
}

void ForkHandler::make_copies() {
  bool failed = false;
  pool_.for_each_live_hugetlb_range([&](uintptr_t begin, size_t size) {
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
  if (failed) {
    drop_copies();
    copied_bytes_ = 0;
  }
}

void ForkHandler::drop_copies() {
  for (const Copy& c : copies_) os_.unmap(c.copy, c.size);
  copies_.clear();
}

}  // namespace hpa
