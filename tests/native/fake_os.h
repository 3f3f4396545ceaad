// A fake of the OS layer for tests: no mmap, no sysfs. Memory comes from the C++ heap (touched
// only where the pool writes its free lists), hugetlb pools are counters that can run dry, and
// the topology is whatever the test says. Every call is counted, and so is every call made while
// the caller holds a pool lock (Note [Lock checks], sync.h: built with HPA_LOCK_CHECKS).
#pragma once

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "os.h"
#include "sync.h"

namespace hpa {

class FakeOs final : public Os {
 public:
  // `nodes` NUMA nodes with `cpus_per_node` CPUs each (node n has CPUs n*cpus_per_node...); each
  // node has `pages_2m` / `pages_1g` free hugetlb pages. Node i is 10 * |i - j| + 10 away from node
  // j (a line), so "nearest" is well defined.
  FakeOs(int nodes, int cpus_per_node, int64_t pages_2m, int64_t pages_1g, bool thp = true);
  ~FakeOs() override;

  // Like the kernel: a hugetlb map() reserves pages from the total over all nodes; populate()
  // takes them from nodes as the range's policy says (bind: its nodes only, else ENOMEM;
  // preferred: its node first; interleave: round-robin over its nodes, then any; none: the
  // calling CPU's node first).
  MapResult map(PageKind kind, size_t size) override;
  MapResult map_composite(size_t head, size_t tail) override;
  int unmap(void* addr, size_t size) override;
  int populate(void* addr, size_t size) override;
  int set_policy(void* addr, size_t size, MemPolicy policy, NodeMask nodes) override;
  int thread_policy(MemPolicy* policy, NodeMask* nodes) override;
  // A copy in a mapping of its own; moved "over" a range, it is copied back and unmapped.
  MapResult map_copy(const void* src, size_t size) override;
  int move_mapping(void* from, void* to, size_t size) override;
  int64_t hugetlb_free(PageKind kind, int node) override;
  bool is_mapped(const void* addr) override;
  int current_cpu() override { return cpu_; }
  int read_file(const char* path, std::string* out) override;
  // No shared memory in the fake: the pool never asks for it, and shared memory is tested on the
  // real kernel (tests/test_shared_regions.py, tests/clients/test_shared_memory.py), whose file
  // descriptors cross real processes.
  FdResult create_shared(PageKind, size_t) override { return {-1, ENOSYS}; }
  MapResult map_shared(int, size_t, PageKind) override { return {nullptr, ENOSYS}; }
  FdResult dup_fd(int) override { return {-1, ENOSYS}; }
  int close_fd(int) override { return ENOSYS; }
  int file_info(int, FileId*, size_t*) override { return ENOSYS; }
  int process_id() override { return 1; }
  bool process_alive(int) override { return true; }
  int discard(void*, size_t) override { return ENOSYS; }

  // Test controls.
  void set_cpu(int cpu) { cpu_ = cpu; }
  void set_thread_policy(MemPolicy policy, NodeMask nodes) { policy_ = policy; policy_nodes_ = nodes; }
  // Free pages of `kind` on `node` (-1: on every node).
  void set_free_pages(PageKind kind, int64_t pages, int node = -1);
  int64_t free_pages(PageKind kind, int node = -1) const;  // -1: the sum over nodes
  // The next `n` populate() calls on hugetlb memory fail with `error` (a cgroup limit: EFAULT).
  void fail_populate(int n, int error) { populate_failures_ = n; populate_error_ = error; }
  // What backs the mapping holding `addr`: hugetlb pages per node (empty if not a mapping), and
  // the policy it was given (kDefault and 0 if none).
  std::vector<int64_t> node_pages(uintptr_t addr) const;
  std::pair<MemPolicy, NodeMask> policy_of(uintptr_t addr) const;
  int64_t map_calls() const { return map_calls_; }
  int64_t unmap_calls() const { return unmap_calls_; }
  int64_t live_mappings() const { return static_cast<int64_t>(mappings_.size()); }
  size_t mapped_bytes() const;
  // Errors seen: an unmap of a range that is not (or no longer) mapped, or not 2 MiB aligned.
  int64_t bad_unmaps() const { return bad_unmaps_; }
  // System calls made while a pool lock was held (always 0 without HPA_LOCK_CHECKS).
  int64_t calls_under_lock() const { return calls_under_lock_.load(std::memory_order_relaxed); }
  // Each map() takes this long first, as a kernel that zeroes the pages does (single-flight tests).
  void set_map_delay_us(int us) { map_delay_us_.store(us, std::memory_order_relaxed); }

 private:
  static constexpr int8_t kNoPage = -1;
  struct Mapping {
    size_t size;
    size_t head_1g;           // bytes of 1 GiB pages at the start (kHugetlb1G, composite)
    bool hugetlb;
    void* memory;
    std::vector<bool> gone;   // per 2 MiB chunk: unmapped already
    std::vector<int8_t> node; // per 2 MiB chunk: node of the hugetlb page behind it, kNoPage
    int64_t reserved_2m;      // reserved at map(), not yet populated
    int64_t reserved_1g;
    size_t live;              // bytes still mapped
    MemPolicy policy = MemPolicy::kDefault;
    NodeMask policy_nodes = 0;
  };
  MapResult take(size_t size, size_t align, size_t head_1g, bool hugetlb);
  // A node with a free page of `kind` for a mapping of this policy, or kNoPage. REQUIRES: mu_.
  int pick_node(const Mapping& m, PageKind kind);
  std::map<uintptr_t, Mapping>::const_iterator find(uintptr_t addr) const;
  int64_t total_free(PageKind kind) const;  // REQUIRES: mu_
  void system_call();  // counts a call made under a pool lock

  mutable std::mutex mu_;
  int nodes_;
  int cpus_per_node_;
  bool thp_;
  int cpu_ = 0;
  MemPolicy policy_ = MemPolicy::kDefault;
  NodeMask policy_nodes_ = 0;
  std::vector<int64_t> free_2m_;  // per node
  std::vector<int64_t> free_1g_;
  int64_t reserved_2m_ = 0;       // over all mappings
  int64_t reserved_1g_ = 0;
  uint64_t interleave_next_ = 0;
  int populate_failures_ = 0;
  int populate_error_ = 0;
  int64_t map_calls_ = 0;
  int64_t unmap_calls_ = 0;
  int64_t bad_unmaps_ = 0;
  std::atomic<int64_t> calls_under_lock_{0};
  std::atomic<int> map_delay_us_{0};
  std::map<uintptr_t, Mapping> mappings_;
};

}  // namespace hpa
