// Shared CPU storage on huge pages: the memory that DataLoader workers collate batches into,
// that share_memory_() moves tensors to, and that torch.multiprocessing sends between processes.
// The Python side (hugepage_allocator/_shared.py) routes PyTorch's calls here.
//
// Note [Shared memory]
// PyTorch's own shared memory is a /dev/shm file (or a descriptor of one) on 4 KiB pages: every
// batch a worker collates is a new file, faulted in page by page by the worker and again by the
// process that receives it, and unmapped when the batch dies. Here a region is an anonymous
// memory file (memfd) of explicit huge pages while the kernel has free ones (else shared memory
// advised for THP, else ordinary shared memory), faulted in at once with MADV_POPULATE_WRITE like
// the pool's segments (a hugetlb cgroup limit is then an error and a fallback, not a SIGBUS), and
// sent to other processes as a file descriptor, as PyTorch's file_descriptor strategy does.
// A hugetlb file's pages are reserved when the creator maps it; a receiver's mapping of pages
// that exist needs no reservation, so no process ever faults on a page that is not there.
//
// Reuse. A region belongs to the process that created it. When that process's storage on it dies,
// the region stays mapped in an idle list and the next storage of the same region size takes it:
// no system call, no fault, no zeroing. It may be taken only once no other process uses it: the
// last 64 bytes of every region are a control block in the shared memory itself, whose `holders`
// count goes up for every message that carries the region (share(), when it is pickled) and down
// when the storage a receiver made of it dies (at once, when the receiver already holds a live
// storage of that file). A receiver keeps the mappings of storages that died in an idle list too,
// by file identity: the owner's next batch in the same region arrives as the same file and is
// already mapped, so the receiver does not fault either. An idle received mapping is dropped when
// its owner retires the region (a flag in the control block), when the owner process is gone
// (checked at every receive and free, and by reap()), beyond the idle limit, and by release().
//
// Fork. A forked child must not reuse regions of its parent (both would write the same memory):
// in the child the idle lists are dropped and the generation advances; a storage that the child
// inherited and frees is unmapped there without touching any count (the parent's copy still
// holds it). Nothing here is on the pool's allocate/free path.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "os.h"
#include "pool.h"
#include "stats.h"

namespace hpa {

struct SharedRegion;  // one mapping of a shared file in this process (shared_memory.cpp)

// What a message carries so that another process can map a region: the descriptor (this
// process's; the message duplicates it) and the region's size in bytes.
struct SharedHandle {
  int fd = -1;
  size_t size = 0;
};

// Shared-memory statistics of this process (memory_stats() keys "shared_*", README).
struct SharedStats {
  ByteStat in_use[kNumPageKinds];  // regions under live storages, made here or received
  int64_t idle_bytes = 0;          // regions kept mapped with no storage on them
  int64_t idle_regions = 0;
  int64_t num_maps = 0;            // regions created, or received files mapped anew
  int64_t num_reuses = 0;          // storages placed on an idle region (no system call)
  int64_t num_unmaps = 0;
  int64_t num_fallbacks = 0;       // regions not of the plan's first kind
  int64_t num_map_failures = 0;    // hugetlb files the kernel refused (then the kind backs off)
  int64_t num_failures = 0;        // creations no kind could serve
};

class SharedMemory {
 public:
  static constexpr size_t kControlBytes = 64;
  // Smaller storages go on ordinary pages (the caller's plan says so): a region of huge pages
  // would be mostly empty. They are reused all the same.
  static constexpr size_t kHugeMinSize = size_t{1} << 20;

  explicit SharedMemory(Os& os) : os_(os) {}
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;

  // A region for a new storage of `nbytes` (> 0): an idle one of this process of the same size,
  // else a new file of the first kind of `plan` that the kernel can give, preferring `node`
  // (-1: no preference); kThp only where the kernel's shmem_enabled lets shared memory be huge.
  // nullptr when none could be had, with the last errno in *error.
  SharedRegion* create(size_t nbytes, const Plan& plan, int node, int* error);
  // Maps the region another process sent: `fd` is borrowed (kept as a duplicate), `size` is the
  // region size the sender gave. nullptr on failure (a file of another size or not of ours:
  // EINVAL; else the errno of the failing call), with it in *error.
  SharedRegion* receive(int fd, size_t size, int* error);
  // The storage on `r` died (the DataPtr deleter).
  void release(SharedRegion* r);
  // For a message that carries `r`: one more holder until the receiver's storage dies.
  SharedHandle share(SharedRegion* r);
  // A received message whose region this process already holds a live storage of: its count.
  void drop_message(SharedRegion* r);

  // Drops idle received mappings whose owner retired the region or is gone. Returns bytes unmapped.
  size_t reap();
  // Drops every idle region, owned and received, and ends the hugetlb back-off (empty_cache()).
  // Returns bytes unmapped.
  size_t release_idle();
  void set_max_idle(size_t bytes) { max_idle_.store(bytes, std::memory_order_relaxed); }

  SharedStats stats() const;

  static void* data(const SharedRegion* r);
  static size_t region_size(size_t nbytes, PageKind kind);

  // At fork(), for Note [Fork] (fork.h): held across fork(); the child forgets its idle regions.
  void lock() { mu_.lock(); }
  void unlock() { mu_.unlock(); }
  void forget_after_fork();  // REQUIRES: in the child, after unlock()

 private:
  SharedRegion* make(size_t nbytes, PageKind kind, int node, int* error);
  bool shmem_thp();  // /sys/kernel/mm/transparent_hugepage/shmem_enabled allows advised THP
  bool backing_off(PageKind kind);            // REQUIRES: a hugetlb kind
  void note_outcome(PageKind kind, bool ok);  // REQUIRES: a hugetlb kind
  // Takes list[j] out of an idle list for a new storage (REQUIRES: mu_).
  SharedRegion* reuse(std::vector<SharedRegion*>& list, size_t j);
  // A record for a mapping of `fd`; on failure (no memory for it) the mapping and fd are released.
  SharedRegion* adopt(void* base, size_t size, int fd, FileId id, bool owned, int* error);
  // Takes regions out of the idle lists (REQUIRES: mu_): those `drop` says, then the oldest
  // while over the limit. They are unmapped by the caller after the lock is released.
  template <typename Drop>
  void take_idle(std::vector<SharedRegion*>* out, Drop drop);
  // An idle received region whose owner retired it or no longer exists (REQUIRES: mu_; a
  // kill(pid, 0) per region: the lists are short and this is not the pool's path).
  bool owner_gone(const SharedRegion* r);
  void destroy(SharedRegion* r, bool retire);
  size_t destroy_all(std::vector<SharedRegion*>& regions, bool retire);

  Os& os_;
  mutable std::mutex mu_;
  std::vector<SharedRegion*> idle_owned_;     // oldest first
  std::vector<SharedRegion*> idle_received_;  // oldest first
  std::atomic<uint64_t> generation_{0};
  std::atomic<size_t> max_idle_{size_t{1} << 30};
  std::atomic<int> shmem_thp_{-1};  // -1: not read yet
  // Back-off of the hugetlb kinds ([0] 2 MiB, [1] 1 GiB): creations still to skip, and the last span.
  std::atomic<uint32_t> skip_[2] = {};
  std::atomic<uint32_t> span_[2] = {};
  SharedStats stats_;  // REQUIRES: mu_
};

}  // namespace hpa
