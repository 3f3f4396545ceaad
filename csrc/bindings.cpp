// The Python module hugepage_allocator._C: thin wrappers, no policy. (The tests' native module,
// with a pool over a fake OS layer and the hot-path timers, is built apart: tests/native.)
#include <c10/core/CPUAllocator.h>
#include <torch/extension.h>

#include <string>
#include <vector>

#include "allocator.h"
#include "binding_args.h"
#include "pool_stats.h"

namespace hpa {
namespace {

// Keys "shared_bytes.<kind|all>.*", "shared_idle_bytes.all.current", "shared_idle_regions" and
// "num_shared_*" (README, Statistics).
void put_shared(StatsDict& d, const SharedStats& s) {
  ByteStat all;
  for (int k = 0; k < kNumPageKinds; ++k) {
    put_byte(d, "shared_bytes", page_kind_name(static_cast<PageKind>(k)), s.in_use[k]);
    all.merge(s.in_use[k]);
  }
  put_byte(d, "shared_bytes", "all", all);
  d["shared_idle_bytes.all.current"] = s.idle_bytes;
  d["shared_idle_regions"] = s.idle_regions;
  d["num_shared_maps"] = s.num_maps;
  d["num_shared_reuses"] = s.num_reuses;
  d["num_shared_unmaps"] = s.num_unmaps;
  d["num_shared_fallbacks"] = s.num_fallbacks;
  d["num_shared_map_failures"] = s.num_map_failures;
  d["num_shared_failures"] = s.num_failures;
}

StatsDict stats() {
  HugePageAllocator& a = HugePageAllocator::get();
  StatsDict d = pool_stats(a.pool());
  d["num_ooms"] = a.num_ooms();
  d["num_passthrough"] = a.num_passthrough();
  put_shared(d, a.shared().stats());
  return d;
}

// The shared region under a storage: (fd, region size) for a message that carries it, counted as
// one more holder (Note [Shared memory]); None when the storage is not on one of ours.
py::object share_storage(const at::Storage& storage) {
  SharedRegion* r = HugePageAllocator::shared_region_of(storage);
  if (r == nullptr) return py::none();
  const SharedHandle h = HugePageAllocator::get().shared().share(r);
  return py::make_tuple(h.fd, h.size);
}

Settings make_settings(size_t min_size, size_t huge_1g_min_size, int kinds, size_t max_cached, int numa_mode,
                       uint64_t numa_nodes, size_t max_shared_cached) {
  TORCH_CHECK_VALUE(kinds >= 0 && kinds <= kAllKinds, "hugepage_allocator: invalid page kind mask ", kinds);
  Settings s;
  s.min_size = min_size;
  s.huge_1g_min_size = huge_1g_min_size;
  s.kinds = static_cast<KindMask>(kinds);
  s.max_cached = max_cached;
  s.placement = make_placement(numa_mode, numa_nodes);
  s.follow_process_policy = numa_mode < 0;
  s.max_shared_cached = max_shared_cached;
  return s;
}

// A 1-D uint8 tensor of `nbytes` on exactly `kind` pages of `node` (-1: the calling CPU's node);
// Python views it as the dtype.
at::Tensor empty_bytes(int64_t nbytes, int kind, int node) {
  TORCH_CHECK_VALUE(nbytes >= 0, "hugepage_allocator.empty: negative size ", nbytes);
  HugePageAllocator& a = HugePageAllocator::get();
  if (node < 0) node = a.current_node();
  c10::DataPtr data = a.allocate_on(static_cast<size_t>(nbytes), to_kind(kind), node);
  c10::Storage storage(c10::Storage::use_byte_size_t(), nbytes, std::move(data), &a, /*resizable=*/false);
  return at::empty({0}, at::TensorOptions().dtype(at::kByte)).set_(storage, 0, {nbytes}, {1});
}

}  // namespace
}  // namespace hpa

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using hpa::HugePageAllocator;
  m.doc() = "Native core of hugepage_allocator (use the Python package, not this module)";
  m.def("install", [](size_t min_size, size_t huge_1g_min_size, int kinds, size_t max_cached, int numa_mode,
                       uint64_t numa_nodes, size_t max_shared_cached) {
    HugePageAllocator::get().install(
        hpa::make_settings(min_size, huge_1g_min_size, kinds, max_cached, numa_mode, numa_nodes, max_shared_cached));
  });
  m.def("placement", [] {
    HugePageAllocator& a = HugePageAllocator::get();
    return hpa::describe(a.placement(), a.topology());
  }, "The NUMA placement in effect, in the numa_policy setting's words");
  m.def("uninstall", [] { HugePageAllocator::get().uninstall(); });
  m.def("is_installed", [] { return HugePageAllocator::get().is_installed(); });
  m.def("stats", &hpa::stats);
  m.def("reset_peak_memory_stats", [] { HugePageAllocator::get().pool().reset_peaks(); });
  m.def("empty_cache", [] {
    HugePageAllocator& a = HugePageAllocator::get();
    return a.pool().release() + a.shared().release_idle();
  });

  // Shared storage (csrc/shared_memory.h; hugepage_allocator/_shared.py routes PyTorch there).
  m.def("new_shared", [](size_t nbytes) -> py::object {
    c10::Storage s = HugePageAllocator::get().new_shared(nbytes);
    if (!s) return py::none();
    return py::cast(at::Storage(std::move(s)));
  }, "A storage of `nbytes` on a shared region, or None when no region could be had");
  m.def("move_to_shared", [](const at::Storage& s) { return HugePageAllocator::get().move_to_shared(s); },
        "Moves the storage's bytes to a shared region in place; False when none could be had");
  m.def("is_shared_region", [](const at::Storage& s) { return HugePageAllocator::shared_region_of(s) != nullptr; });
  m.def("share_storage", &hpa::share_storage);
  m.def("drop_message", [](const at::Storage& s) {
    if (hpa::SharedRegion* r = HugePageAllocator::shared_region_of(s)) HugePageAllocator::get().shared().drop_message(r);
  }, "A received message found its storage alive here: drops the message's count");
  m.def("receive_shared", [](int fd, size_t nbytes, size_t size) {
    return at::Storage(HugePageAllocator::get().receive_shared(fd, nbytes, size));
  });
  m.def("reap_shared", [] { return HugePageAllocator::get().shared().reap(); },
        "Unmaps idle received regions whose owner process is gone; returns the bytes");
  m.def("empty_bytes", &hpa::empty_bytes);
  m.def("nodes", [] { return HugePageAllocator::get().topology().nodes(); });
  m.def("block_size", [](uintptr_t ptr) {
    return HugePageAllocator::get().pool().block_size(reinterpret_cast<void*>(ptr));
  }, "Size of this allocator's block starting at (or small object at) `ptr`; 0 if not ours");
  m.def("page_kind_at", [](uintptr_t ptr) {
    return HugePageAllocator::get().pool().kind_at(reinterpret_cast<void*>(ptr));
  }, "The page kind (PageKind number) of the pool's memory at `ptr`; -1 if the pool maps none there");
  m.def("discard_pages", [](uintptr_t ptr, size_t nbytes) {
    const int error = hpa::real_os().discard(reinterpret_cast<void*>(ptr), nbytes);
    TORCH_CHECK(error == 0, "hugepage_allocator: madvise(MADV_DONTNEED) of ", nbytes, " bytes at ",
                reinterpret_cast<void*>(ptr), " failed: ", std::strerror(error));
  }, "Drops this process's page-table entries of the whole pages inside a range of a file mapping");
  m.def("page_kind_names", [] {
    std::vector<std::string> names;
    for (int k = 0; k < hpa::kNumPageKinds; ++k) names.push_back(hpa::page_kind_name(static_cast<hpa::PageKind>(k)));
    return names;
  });
  m.def("small_max", [] { return hpa::kSmallMax; });
  m.def("size_class", [](size_t n) {
    TORCH_CHECK_VALUE(n > 0 && n <= hpa::kSmallMax, "size_class: 1..", hpa::kSmallMax);
    return hpa::SizeClasses::size(hpa::SizeClasses::of(n));
  }, "The size class (bytes) a small request of `n` bytes is served from");

}
