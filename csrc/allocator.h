// The c10::Allocator that puts CPU tensors on huge pages: turns settings into a plan per request
// and hands it to the pool (below `min_size`, to the allocator that was current before install()),
// and reports to the PyTorch profiler.
//
// Note [One deleter for everything]
// PyTorch's oneDNN glue allocates with raw_allocate() and frees with raw_deallocate() on whatever
// CPU allocator is current at the time of the free, and a storage frees through the deleter it
// was created with. So the allocator is created once and never destroyed; every DataPtr it makes
// carries the same static deleter with context == data; that deleter recognises our blocks by
// address (Pool::free) and hands any other pointer to the previous allocator's raw
// deleter. uninstall() therefore never puts the previous allocator back (glibc would then be
// handed our pointers): it stops serving from the pool and forwards new requests to the
// previous allocator, while our deleter stays in charge of every pointer.
//
// Note [Foreign pointers]
// A pointer the pool does not recognise as a block in use goes to the previous allocator only if
// it could be that allocator's. It cannot be when it lies inside a segment the pool maps now (a
// double free, a pointer into a block, or a pool bug), nor when it lies in a range the pool gave
// back to the kernel and nothing is mapped there now (a block freed after its memory went back).
// Handing either to glibc corrupts its heap or aborts it far from the cause, so the deleter stops
// the process at once with a message naming the address and what the pool knows of it
// (Pool::describe). The check costs nothing for our own blocks; a foreign pointer pays one page-map
// read and a scan of the last 64 ranges given back (and, only inside one of those, a mincore).
#pragma once

#include <c10/core/Allocator.h>
#include <c10/core/Storage.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "fork.h"
#include "placement.h"
#include "pool.h"
#include "os.h"
#include "shared_memory.h"
#include "topology.h"

namespace hpa {

struct Settings {
  size_t min_size = 0;                   // smaller requests go to the previous allocator
  size_t huge_1g_min_size = kGiB;        // requests at least this large try 1 GiB pages first
  KindMask kinds = kAllKinds;            // page kinds that may be used, in fallback order
  size_t max_cached = Pool::kUnlimited;  // idle bytes kept; beyond, free segments are unmapped
  Placement placement;                   // where on the NUMA nodes (placement.h)
  bool follow_process_policy = true;     // placement unset: the process's memory policy decides
  size_t max_shared_cached = kGiB;         // idle shared regions kept mapped (shared_memory.h)
};

class HugePageAllocator final : public c10::Allocator {
 public:
  // The one instance, created on first use and never destroyed (Note [One deleter for everything]).
  static HugePageAllocator& get();

  c10::DataPtr allocate(size_t nbytes) override;
  c10::DeleterFnPtr raw_deleter() const override { return &delete_ptr; }
  void copy_data(void* dest, const void* src, size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // One block of exactly `kind` on `node`, no fallback; out-of-memory error if none can be had.
  c10::DataPtr allocate_on(size_t nbytes, PageKind kind, int node);
  // Frees a pointer of ours or, if foreign, hands it to the previous allocator's deleter; stops
  // the process on a pointer that can be neither's (Note [Foreign pointers]).
  static void delete_ptr(void* ptr);

  // Makes this the process's CPU allocator (c10::SetCPUAllocator) and starts serving from the
  // pool. Harmless when already installed: then it only applies `settings`. Refused (c10::Error)
  // when the current allocator has no raw deleter or outranks ours. Safe against concurrent
  // install() calls, not against other threads allocating meanwhile (nor is SetCPUAllocator).
  void install(const Settings& settings);
  // Stops serving from the pool; see Note [One deleter for everything].
  void uninstall() { serving_.store(false, std::memory_order_release); }
  bool is_installed() const;
  void configure(const Settings& settings);

  // The NUMA node of the calling CPU (no system call on a one-node machine).
  int current_node() const;
  // The placement in effect (after the process's memory policy was consulted).
  Placement placement() const {
    return {static_cast<NumaMode>(numa_mode_.load(std::memory_order_relaxed)),
            numa_nodes_.load(std::memory_order_relaxed)};
  }

  // Shared storage, Note [Shared memory] (shared_memory.h). A storage of `nbytes` on a shared
  // region of this allocator's page kinds, or an undefined storage when no region could be had
  // (the caller then uses PyTorch's own shared memory).
  c10::Storage new_shared(size_t nbytes);
  // Moves `storage`'s bytes to a new shared region, as PyTorch's share_memory_() moves them to its
  // own: same StorageImpl, new data pointer, no longer resizable. False when no region could be had.
  bool move_to_shared(const c10::Storage& storage);
  // The storage another process sent (`fd` borrowed, `nbytes` of the storage on a region of
  // `size`). Throws c10::Error naming the cause.
  c10::Storage receive_shared(int fd, size_t nbytes, size_t size);
  // The region under `storage`, or nullptr when its memory is not a shared region of ours.
  static SharedRegion* shared_region_of(const c10::Storage& storage);
  SharedMemory& shared() { return shared_; }

  Pool& pool() { return pool_; }
  const Topology& topology() const { return topology_; }
  int64_t num_passthrough() const { return num_passthrough_.load(std::memory_order_relaxed); }
  int64_t num_ooms() const { return num_ooms_.load(std::memory_order_relaxed); }

 private:
  HugePageAllocator();
  Plan plan_for(size_t nbytes) const;
  Plan shared_plan(size_t nbytes) const;  // plan_for, but ordinary pages below kHugeMinSize
  Route route_for(size_t nbytes) const;
  c10::DataPtr wrap(const Block& b);
  [[noreturn]] void out_of_memory(size_t nbytes, int node, const Plan& plan);
  // A pointer that is not ours: to the previous allocator, or a fatal stop.
  void delete_foreign(void* ptr);
  static void delete_shared(void* region);  // the deleter of shared storages
  c10::DataPtr wrap_shared(SharedRegion* r);
  c10::DataPtr shared_data(size_t nbytes);  // a region for nbytes (> 0), or an empty DataPtr

  Os& os_;
  Topology topology_;
  Pool pool_;
  SharedMemory shared_;
  ForkHandler fork_;  // Note [Fork] (fork.h)
  std::atomic<bool> serving_{false};
  std::atomic<size_t> min_size_;
  std::atomic<size_t> huge_1g_min_size_;
  std::atomic<KindMask> kinds_;
  std::atomic<uint8_t> numa_mode_{0};
  std::atomic<NodeMask> numa_nodes_{0};
  // The allocator current before the first install(), and its raw deleter: requests below
  // min_size, and every request after uninstall(), go there; foreign pointers go to the deleter.
  // Written once, before serving_ is first set.
  std::atomic<c10::Allocator*> previous_;
  std::atomic<c10::DeleterFnPtr> previous_deleter_;
  std::atomic<int64_t> num_passthrough_{0};
  std::atomic<int64_t> num_ooms_{0};
};

}  // namespace hpa
