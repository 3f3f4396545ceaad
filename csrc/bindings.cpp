// The Python module hugepage_allocator._C: thin wrappers, no policy.
#include <torch/extension.h>

#include <string>
#include <unordered_map>

#include "allocator.h"

namespace hpa {
namespace {

using StatsDict = std::unordered_map<std::string, int64_t>;

void put_bytes(StatsDict& d, const std::string& pool, const PoolStats& s) {
#define HPA_PUT_BYTE(name)                                   \
  d[#name "." + pool + ".current"] = s.name.current;         \
  d[#name "." + pool + ".peak"] = s.name.peak;               \
  d[#name "." + pool + ".allocated"] = s.name.allocated;     \
  d[#name "." + pool + ".freed"] = s.name.freed;
  HPA_BYTE_STATS(HPA_PUT_BYTE)
#undef HPA_PUT_BYTE
}

void put_events(StatsDict& d, const std::string& suffix, const PoolStats& s) {
#define HPA_PUT_EVENT(name) d[#name + suffix] = s.name;
  HPA_EVENT_STATS(HPA_PUT_EVENT)
#undef HPA_PUT_EVENT
}

StatsDict stats() {
  HugePageAllocator& a = HugePageAllocator::get();
  BlockPool& pool = a.pool();
  StatsDict d;
  PoolStats all;
  PoolStats by_kind[kNumPageKinds];
  for (int node : a.topology().nodes()) {
    const PoolStats node_total = pool.node_stats(node);
    all.merge(node_total);
    put_bytes(d, "node" + std::to_string(node), node_total);
    put_events(d, ".node" + std::to_string(node), node_total);
    for (int k = 0; k < kNumPageKinds; ++k) by_kind[k].merge(pool.stats(node, static_cast<PageKind>(k)));
  }
  for (int k = 0; k < kNumPageKinds; ++k) {
    const std::string name = page_kind_name(static_cast<PageKind>(k));
    put_bytes(d, name, by_kind[k]);
    put_events(d, "." + name, by_kind[k]);
  }
  // "all": running totals are sums; current and peak come from the lock-free process totals.
  put_bytes(d, "all", all);
  const GlobalStats& g = pool.global_stats();
  d["allocated_bytes.all.current"] = g.allocated_bytes.current.load();
  d["allocated_bytes.all.peak"] = g.allocated_bytes.peak.load();
  d["requested_bytes.all.current"] = g.requested_bytes.current.load();
  d["requested_bytes.all.peak"] = g.requested_bytes.peak.load();
  d["reserved_bytes.all.current"] = g.reserved_bytes.current.load();
  d["reserved_bytes.all.peak"] = g.reserved_bytes.peak.load();
  put_events(d, "", all);
  d["num_ooms"] = a.num_ooms();
  d["num_passthrough"] = a.num_passthrough();
  return d;
}

Settings make_settings(size_t min_size, size_t huge_1g_min_size, int kinds) {
  TORCH_CHECK_VALUE(kinds >= 0 && kinds <= kAllKinds, "hugepage_allocator: invalid page kind mask ", kinds);
  Settings s;
  s.min_size = min_size;
  s.huge_1g_min_size = huge_1g_min_size;
  s.kinds = static_cast<KindMask>(kinds);
  return s;
}

// A 1-D uint8 tensor of `nbytes` on exactly `kind` pages of `node` (-1: the calling CPU's node);
// Python views it as the dtype.
at::Tensor empty_bytes(int64_t nbytes, int kind, int node) {
  TORCH_CHECK_VALUE(nbytes >= 0, "hugepage_allocator.empty: negative size ", nbytes);
  TORCH_CHECK_VALUE(kind >= 0 && kind < kNumPageKinds, "hugepage_allocator.empty: invalid page kind ", kind);
  HugePageAllocator& a = HugePageAllocator::get();
  if (node < 0) node = a.current_node();
  c10::DataPtr data = a.allocate_on(static_cast<size_t>(nbytes), static_cast<PageKind>(kind), node);
  c10::Storage storage(c10::Storage::use_byte_size_t(), nbytes, std::move(data), &a, /*resizable=*/false);
  return at::empty({0}, at::TensorOptions().dtype(at::kByte)).set_(storage, 0, {nbytes}, {1});
}

}  // namespace
}  // namespace hpa

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using hpa::HugePageAllocator;
  m.doc() = "Native core of hugepage_allocator (use the Python package, not this module)";
  m.def("install", [](size_t min_size, size_t huge_1g_min_size, int kinds) {
    HugePageAllocator::get().install(hpa::make_settings(min_size, huge_1g_min_size, kinds));
  });
  m.def("configure", [](size_t min_size, size_t huge_1g_min_size, int kinds) {
    HugePageAllocator::get().configure(hpa::make_settings(min_size, huge_1g_min_size, kinds));
  });
  m.def("uninstall", [] { HugePageAllocator::get().uninstall(); });
  m.def("is_installed", [] { return HugePageAllocator::get().is_installed(); });
  m.def("stats", &hpa::stats);
  m.def("reset_peak_memory_stats", [] { HugePageAllocator::get().pool().reset_peaks(); });
  m.def("empty_cache", [] { return HugePageAllocator::get().pool().release_all(); });
  m.def("empty_bytes", &hpa::empty_bytes);
  m.def("nodes", [] { return HugePageAllocator::get().topology().nodes(); });
  m.def("owns", [](uintptr_t ptr) {
    return HugePageAllocator::get().pool().lookup(reinterpret_cast<void*>(ptr)) != nullptr;
  }, "Whether `ptr` is the start of a block of this allocator (in use or cached)");
  m.def("page_kind_names", [] {
    std::vector<std::string> names;
    for (int k = 0; k < hpa::kNumPageKinds; ++k) names.push_back(hpa::page_kind_name(static_cast<hpa::PageKind>(k)));
    return names;
  });
}
