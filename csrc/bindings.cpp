// The Python module hugepage_allocator._C: thin wrappers, no policy. `_C.testing` drives a pool
// over a fake OS layer and times the hot path from C++, for the tests and benchmarks.
#include <c10/core/CPUAllocator.h>
#include <torch/extension.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "allocator.h"
#include "fake_os.h"

namespace hpa {
namespace {

using StatsDict = std::unordered_map<std::string, int64_t>;

void put_byte(StatsDict& d, const std::string& stat, const std::string& pool, const ByteStat& s) {
  d[stat + "." + pool + ".current"] = s.current;
  d[stat + "." + pool + ".peak"] = s.peak;
  d[stat + "." + pool + ".allocated"] = s.allocated;
  d[stat + "." + pool + ".freed"] = s.freed;
}

void put_pool(StatsDict& d, const std::string& pool, const PoolStats& s) {
#define HPA_PUT_BYTE(name) put_byte(d, #name, pool, s.name);
  HPA_BYTE_STATS(HPA_PUT_BYTE)
#undef HPA_PUT_BYTE
  const std::string suffix = pool == "all" ? "" : "." + pool;
#define HPA_PUT_EVENT(name) d[#name + suffix] = s.name;
  HPA_EVENT_STATS(HPA_PUT_EVENT)
#undef HPA_PUT_EVENT
}

StatsDict pool_stats(Pool& pool) {
  StatsDict d;
  PoolStats all;
  PoolStats by_kind[kNumPageKinds];
  for (int node : pool.heap_nodes()) {
    PoolStats node_total;
    for (int k = 0; k < kNumPageKinds; ++k) {
      const PoolStats s = pool.heap_stats(node, static_cast<PageKind>(k));
      by_kind[k].merge(s);
      node_total.merge(s);
    }
    all.merge(node_total);
    put_pool(d, node == kInterleaveNode ? std::string("interleave") : "node" + std::to_string(node), node_total);
  }
  for (int k = 0; k < kNumPageKinds; ++k) put_pool(d, page_kind_name(static_cast<PageKind>(k)), by_kind[k]);
  put_pool(d, "all", all);  // events summed over heaps; bytes replaced below
  const ThreadCaches::CallerBytes held = pool.allocated_bytes();
  const ByteStat& allocated = held.bytes;
  put_byte(d, "allocated_bytes", "all", allocated);
  put_byte(d, "reserved_bytes", "all", pool.reserved_bytes().snapshot());
  d["thread_cached_bytes.all.current"] = pool.thread_cached_bytes();
  // Requested: what callers hold less the slack of large spans (a small object counts its class).
  d["requested_bytes.all.current"] = allocated.current - (held.slack_allocated - held.slack_freed);
  d["requested_bytes.all.allocated"] = allocated.allocated - held.slack_allocated;
  d["requested_bytes.all.freed"] = allocated.freed - held.slack_freed;
  return d;
}

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

// `numa_mode` -1: follow the process's memory policy; else a NumaMode over `numa_nodes`.
Placement make_placement(int numa_mode, uint64_t numa_nodes) {
  TORCH_CHECK_VALUE(numa_mode >= -1 && numa_mode <= static_cast<int>(NumaMode::kInterleave),
                    "hugepage_allocator: invalid NUMA mode ", numa_mode);
  return numa_mode < 0 ? Placement{} : Placement{static_cast<NumaMode>(numa_mode), numa_nodes};
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

PageKind to_kind(int kind) {
  TORCH_CHECK_VALUE(kind >= 0 && kind < kNumPageKinds, "hugepage_allocator: invalid page kind ", kind);
  return static_cast<PageKind>(kind);
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

// Nanoseconds per allocate+free pair of `nbytes`, from C++: one figure per round of `pairs`.
// "hugepage": this allocator's allocate() and deleter (REQUIRES: installed); "default": PyTorch's
// default CPU allocator.
std::vector<double> time_alloc_free(const std::string& which, size_t nbytes, int rounds, int pairs) {
  c10::Allocator* alloc = nullptr;
  if (which == "hugepage") {
    TORCH_CHECK(HugePageAllocator::get().is_installed(), "time_alloc_free: install() first");
    alloc = &HugePageAllocator::get();
  } else if (which == "default") {
    alloc = c10::GetDefaultCPUAllocator();
  } else {
    TORCH_CHECK_VALUE(false, "time_alloc_free: which must be 'hugepage' or 'default', not '", which, "'");
  }
  TORCH_CHECK_VALUE(rounds > 0 && pairs > 0, "time_alloc_free: rounds and pairs must be positive");
  { c10::DataPtr warm = alloc->allocate(nbytes); }  // the first pair maps memory; not timed
  std::vector<double> out;
  out.reserve(rounds);
  for (int r = 0; r < rounds; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < pairs; ++i) {
      c10::DataPtr p = alloc->allocate(nbytes);
      asm volatile("" : : "r"(p.get()) : "memory");
    }
    const auto t1 = std::chrono::steady_clock::now();
    out.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() / pairs);
  }
  return out;
}

// A pool over a fake OS, for tests: addresses are real (heap memory), pools and failures are not.
class FakePool {
 public:
  FakePool(int nodes, int cpus_per_node, int64_t pages_2m, int64_t pages_1g, bool thp)
      : os_(nodes, cpus_per_node, pages_2m, pages_1g, thp), topology_(os_) {
    TORCH_CHECK_VALUE(nodes >= 1 && nodes <= kMaxNodes, "FakePool: nodes must be 1..", kMaxNodes);
    const int slot = ThreadCaches::claim_slot();
    TORCH_CHECK(slot > 0, "FakePool: at most ", ThreadCaches::kMaxSlots - 1, " test pools at once");
    pool_ = std::make_unique<Pool>(os_, topology_, slot);
    fork_ = std::make_unique<ForkHandler>(os_, *pool_);
  }

  // (address, block size) or None when nothing can serve it: a request from a CPU of `node`,
  // placed as the allocator would (HugePageAllocator::plan_for, route_for; default 1G threshold).
  py::object alloc(size_t nbytes, int node, int kinds) {
    TORCH_CHECK_VALUE(nbytes > 0, "alloc: size must be positive");
    TORCH_CHECK_VALUE(topology_.has_node(node), "alloc: no node ", node);
    Plan plan;
    if ((kinds & kind_bit(PageKind::kHugetlb1G)) && nbytes >= kGiB) plan.add(PageKind::kHugetlb1G);
    for (PageKind k : {PageKind::kHugetlb2M, PageKind::kThp, PageKind::kBase})
      if (kinds & kind_bit(k)) plan.add(k);
    pool_->set_small_kinds(static_cast<KindMask>(kinds));
    const Block b = pool_->allocate(nbytes, route(placement_, topology_, node, nbytes > kSmallMax), plan);
    if (b.ptr == nullptr) return py::none();
    return py::make_tuple(reinterpret_cast<uintptr_t>(b.ptr), b.size);
  }
  // As HugePageAllocator::configure does for the placement; returns it in words.
  std::string set_placement(int numa_mode, uint64_t numa_nodes) {
    placement_ = effective_placement(os_, topology_, numa_mode < 0, make_placement(numa_mode, numa_nodes));
    pool_->set_binding(placement_.mode == NumaMode::kBind,
                       placement_.mode == NumaMode::kInterleave ? placement_.nodes : 0);
    return describe(placement_, topology_);
  }
  py::object alloc_exact(size_t nbytes, int kind, int node) {
    const Block b = pool_->allocate_exact(nbytes, to_kind(kind), node);
    if (b.ptr == nullptr) return py::none();
    return py::make_tuple(reinterpret_cast<uintptr_t>(b.ptr), b.size);
  }
  size_t free(uintptr_t p) { return pool_->free(reinterpret_cast<void*>(p)); }
  size_t block_size(uintptr_t p) const { return pool_->block_size(reinterpret_cast<void*>(p)); }

  Pool& pool() { return *pool_; }
  FakeOs& os() { return os_; }
  // A fork() of which this process plays the child, or the parent: the handlers the process
  // allocator registers with pthread_atfork (fork.h), run around no real fork. Returns the bytes
  // copied for the child (Note [Fork copies]).
  size_t fork_child() {
    fork_->before();
    const size_t copied = fork_->copied_bytes();
    fork_->in_child();
    return copied;
  }
  size_t fork_parent() {
    fork_->before();
    const size_t copied = fork_->copied_bytes();
    fork_->in_parent();
    return copied;
  }

 private:
  FakeOs os_;
  Topology topology_;
  std::unique_ptr<Pool> pool_;
  std::unique_ptr<ForkHandler> fork_;
  Placement placement_;
};

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

  auto t = m.def_submodule("testing", "Test and benchmark hooks: a pool over a fake OS, hot-path timing");
  // Without the GIL: other Python threads run meanwhile (a fork test forks while it allocates).
  t.def("time_alloc_free", &hpa::time_alloc_free, py::arg("which"), py::arg("nbytes"),
        py::arg("rounds") = 31, py::arg("pairs") = 10000, py::call_guard<py::gil_scoped_release>());
  t.def("delete_ptr", [](uintptr_t ptr) { HugePageAllocator::delete_ptr(reinterpret_cast<void*>(ptr)); },
        "Calls the allocator's deleter on `ptr`, as PyTorch does when a storage dies (tests only: "
        "a wrong pointer stops the process)");
  py::class_<hpa::FakePool>(t, "FakePool")
      .def(py::init<int, int, int64_t, int64_t, bool>(), py::arg("nodes") = 1, py::arg("cpus_per_node") = 2,
           py::arg("pages_2m") = 0, py::arg("pages_1g") = 0, py::arg("thp") = true)
      .def("alloc", &hpa::FakePool::alloc, py::arg("nbytes"), py::arg("node") = 0, py::arg("kinds") = hpa::kAllKinds)
      .def("alloc_exact", &hpa::FakePool::alloc_exact, py::arg("nbytes"), py::arg("kind"), py::arg("node") = 0)
      .def("free", &hpa::FakePool::free)
      .def("block_size", &hpa::FakePool::block_size)
      .def("release", [](hpa::FakePool& p) { return p.pool().release(); })
      .def("stats", [](hpa::FakePool& p) { return hpa::pool_stats(p.pool()); })
      .def("set_max_cached", [](hpa::FakePool& p, size_t n) { p.pool().set_max_cached(n); })
      .def("bind_thread_cache", [](hpa::FakePool& p, int node) { p.pool().bind_thread_cache(node); })
      .def("fork_child", &hpa::FakePool::fork_child,
           "Runs the fork handlers as the child would see them; returns the bytes copied for it")
      .def("fork_parent", &hpa::FakePool::fork_parent,
           "Runs the fork handlers as the parent would see them; returns the bytes copied for the child")
      .def("describe", [](hpa::FakePool& p, uintptr_t addr) { return p.pool().describe(reinterpret_cast<void*>(addr)); })
      .def("holds", [](hpa::FakePool& p, uintptr_t addr) { return p.pool().holds(reinterpret_cast<void*>(addr)); })
      .def("set_placement", &hpa::FakePool::set_placement, py::arg("mode"), py::arg("nodes") = 0)
      .def("set_thread_policy", [](hpa::FakePool& p, int policy, uint64_t nodes) {
        TORCH_CHECK_VALUE(policy >= 0 && policy <= 3, "set_thread_policy: policy 0..3");
        p.os().set_thread_policy(static_cast<hpa::MemPolicy>(policy), nodes);
      })
      .def("node_pages", [](hpa::FakePool& p, uintptr_t addr) { return p.os().node_pages(addr); },
           "2 MiB chunks of hugetlb memory per node behind the mapping holding `addr`")
      .def("policy_of", [](hpa::FakePool& p, uintptr_t addr) {
        const auto [policy, nodes] = p.os().policy_of(addr);
        return py::make_tuple(static_cast<int>(policy), nodes);
      }, "(MemPolicy number, node mask) the mapping holding `addr` was bound with")
      .def("set_free_pages", [](hpa::FakePool& p, int kind, int64_t n, int node) {
        p.os().set_free_pages(hpa::to_kind(kind), n, node);
      }, py::arg("kind"), py::arg("pages"), py::arg("node") = -1)
      .def("free_pages", [](hpa::FakePool& p, int kind, int node) {
        return p.os().free_pages(hpa::to_kind(kind), node);
      }, py::arg("kind"), py::arg("node") = -1)
      .def("fail_populate", [](hpa::FakePool& p, int n, int err) { p.os().fail_populate(n, err); })
      .def_property_readonly("map_calls", [](hpa::FakePool& p) { return p.os().map_calls(); })
      .def_property_readonly("unmap_calls", [](hpa::FakePool& p) { return p.os().unmap_calls(); })
      .def_property_readonly("live_mappings", [](hpa::FakePool& p) { return p.os().live_mappings(); })
      .def_property_readonly("mapped_bytes", [](hpa::FakePool& p) { return p.os().mapped_bytes(); })
      .def_property_readonly("bad_unmaps", [](hpa::FakePool& p) { return p.os().bad_unmaps(); });
}
