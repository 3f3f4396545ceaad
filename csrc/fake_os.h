// A fake of the OS layer for tests: no mmap, no sysfs. Memory comes from the C++ heap (touched
// only where the pool writes its free lists), hugetlb pools are counters that can run dry, and
// the topology is whatever the test says. Every call is counted.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "os.h"

namespace hpa {

class FakeOs final : public Os {
 public:
  // `nodes` NUMA nodes with `cpus_per_node` CPUs each; `pages_2m` / `pages_1g` free hugetlb pages.
  FakeOs(int nodes, int cpus_per_node, int64_t pages_2m, int64_t pages_1g, bool thp = true);
  ~FakeOs() override;

  MapResult map(PageKind kind, size_t size) override;
  MapResult map_composite(size_t head, size_t tail) override;
  int unmap(void* addr, size_t size) override;
  int populate(void* addr, size_t size) override;
  // A copy in a mapping of its own; moved "over" a range, it is copied back and unmapped.
  MapResult map_copy(const void* src, size_t size) override;
  int move_mapping(void* from, void* to, size_t size) override;
  int bind_to_node(void* addr, size_t size, int node, bool strict) override;
  int current_cpu() override { return cpu_; }
  int read_file(const char* path, std::string* out) override;

  // Test controls.
  void set_cpu(int cpu) { cpu_ = cpu; }
  void set_free_pages(PageKind kind, int64_t pages);
  int64_t free_pages(PageKind kind) const;
  // The next `n` populate() calls on hugetlb memory fail with `error` (a cgroup limit: EFAULT).
  void fail_populate(int n, int error) { populate_failures_ = n; populate_error_ = error; }
  int64_t map_calls() const { return map_calls_; }
  int64_t unmap_calls() const { return unmap_calls_; }
  int64_t live_mappings() const { return static_cast<int64_t>(mappings_.size()); }
  size_t mapped_bytes() const;
  // Errors seen: an unmap of a range that is not (or no longer) mapped, or not 2 MiB aligned.
  int64_t bad_unmaps() const { return bad_unmaps_; }

 private:
  struct Mapping {
    size_t size;
    int64_t pages_2m;
    int64_t pages_1g;
    void* memory;
    std::vector<bool> gone;  // per 2 MiB chunk: unmapped already
    size_t live;             // bytes still mapped
  };
  MapResult take(size_t size, size_t align, int64_t pages_2m, int64_t pages_1g);

  mutable std::mutex mu_;
  int nodes_;
  int cpus_per_node_;
  bool thp_;
  int cpu_ = 0;
  int64_t free_2m_;
  int64_t free_1g_;
  int populate_failures_ = 0;
  int populate_error_ = 0;
  int64_t map_calls_ = 0;
  int64_t unmap_calls_ = 0;
  int64_t bad_unmaps_ = 0;
  std::map<uintptr_t, Mapping> mappings_;
};

}  // namespace hpa
