// hpa_testing: the tests' and benchmarks' native module, built apart from the product
// (tests/native/build.py), so that the installed package carries none of it. It holds
//   - FakePool: a pool of the core over the fake OS layer (fake_os.h), with its own copy of the
//     core compiled with HPA_LOCK_CHECKS (Note [Lock checks], sync.h);
//   - the timers of the hot path, from C++ and with no GIL: whatever CPU allocator is current
//     (this allocator once installed, else PyTorch's default, over whatever malloc is preloaded),
//     by one thread or many;
//   - delete_ptr: the current allocator's deleter called on any pointer.
#include <c10/core/CPUAllocator.h>
#include <time.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "binding_args.h"
#include "fake_os.h"
#include "fork.h"
#include "placement.h"
#include "pool.h"
#include "pool_stats.h"
#include "sync.h"
#include "thread_cache.h"

namespace hpa {
namespace {

// ---------------------------------------------------------------------------------------------
// Timers

int64_t process_cpu_ns() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Nanoseconds per allocate+free pair of `nbytes` by the current CPU allocator: one figure per
// round of `pairs`.
std::vector<double> time_alloc_free(size_t nbytes, int rounds, int pairs) {
  TORCH_CHECK_VALUE(rounds > 0 && pairs > 0, "time_alloc_free: rounds and pairs must be positive");
  c10::Allocator* alloc = c10::GetCPUAllocator();
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

// Blocks handed from one thread to the next (cross-thread frees): a single-producer,
// single-consumer ring of batches. It is as deep as 32 MiB of blocks allows (up to 16 batches),
// so that a producer whose consumer is not running (more threads than CPUs) can run ahead
// instead of switching at every batch. A waiting thread sleeps (atomic wait: a futex).
constexpr int kBatch = 32;
constexpr int kMaxDepth = 16;
constexpr size_t kInFlightBytes = 32 << 20;
struct alignas(kCacheLine) Ring {
  std::atomic<uint32_t> pushed{0};
  alignas(kCacheLine) std::atomic<uint32_t> popped{0};
  void* batches[kMaxDepth][kBatch];
};

// Waits until `word` is no longer `seen`: spins a little, then yields the CPU (to the thread it
// waits for, when that one is runnable here) for up to 50 us, then sleeps on it. Sleeping at once
// would be slow: in a virtual machine a thread that sleeps lets its CPU halt, and waking a halted
// CPU takes tens of microseconds.
void wait_change(std::atomic<uint32_t>& word, uint32_t seen) {
  for (int i = 0; i < 256; ++i) {
    if (word.load(std::memory_order_acquire) != seen) return;
    cpu_relax();
  }
  const int64_t deadline = now_ns() + 50000;
  while (word.load(std::memory_order_acquire) == seen) {
    if (now_ns() > deadline) {
      word.wait(seen, std::memory_order_acquire);
      return;
    }
    std::this_thread::yield();
  }
}

// `threads` C++ threads each make `pairs` allocate+free pairs of `nbytes` with the current CPU
// allocator (raw_allocate / raw_deallocate, as oneDNN does), started together, in batches of
// kBatch. `cross`: each thread allocates a batch, hands it to the next thread (in a ring) and
// frees a batch it got from the previous one, so every block is freed by another thread than the
// one that made it (with one thread, by itself, a batch later). Returns
//   wall_ns:  from the start to the last thread's end;
//   cpu_ns:   the process's CPU time over it;
//   batch_ns: the median, over every thread's batches, of the time spent in the allocator per
//             pair: the allocations and the frees of a batch are timed, the hand-over is not, so
//             this is the allocator's cost per pair as the threads ran together (a batch in
//             which the thread was preempted is an outlier the median ignores);
//   pairs:    over all threads.
std::map<std::string, double> time_threads(size_t nbytes, int threads, int64_t pairs, bool cross) {
  TORCH_CHECK_VALUE(threads >= 1 && threads <= 1024, "time_threads: threads must be 1..1024, not ", threads);
  TORCH_CHECK_VALUE(pairs > 0 && pairs % kBatch == 0, "time_threads: pairs must be a positive multiple of ",
                    kBatch, ", not ", pairs);
  TORCH_CHECK_VALUE(nbytes > 0, "time_threads: nbytes must be positive");
  c10::Allocator* alloc = c10::GetCPUAllocator();
  const uint32_t depth = static_cast<uint32_t>(
      std::clamp<size_t>(kInFlightBytes / (kBatch * nbytes), 1, kMaxDepth));
  const int64_t batches = pairs / kBatch;
  std::vector<Ring> rings(static_cast<size_t>(threads));
  std::vector<int64_t> end(static_cast<size_t>(threads), 0);
  std::vector<std::vector<float>> batch_ns(static_cast<size_t>(threads));
  std::atomic<int> ready{0};
  std::atomic<uint32_t> go{0};
  auto body = [&](int id) {
    std::vector<float>& times = batch_ns[id];
    times.reserve(static_cast<size_t>(batches));
    // Warm: this thread's first blocks map memory and make its caches; not timed.
    for (int i = 0; i < kBatch; ++i) alloc->raw_deallocate(alloc->raw_allocate(nbytes));
    ready.fetch_add(1);
    go.wait(0);
    void* mine[kBatch];
    if (!cross) {
      for (int64_t b = 0; b < batches; ++b) {
        const int64_t t0 = now_ns();
        for (int i = 0; i < kBatch; ++i) {
          void* p = alloc->raw_allocate(nbytes);
          asm volatile("" : : "r"(p) : "memory");
          alloc->raw_deallocate(p);
        }
        times.push_back(static_cast<float>(now_ns() - t0) / kBatch);
      }
    } else {
      Ring& out = rings[(id + 1) % threads];
      Ring& in = rings[id];
      for (int64_t b = 0; b < batches; ++b) {
        int64_t t0 = now_ns();
        for (void*& p : mine) p = alloc->raw_allocate(nbytes);
        int64_t spent = now_ns() - t0;
        const uint32_t pushed = out.pushed.load(std::memory_order_relaxed);
        for (uint32_t popped; pushed - (popped = out.popped.load(std::memory_order_acquire)) >= depth;)
          wait_change(out.popped, popped);
        std::copy(std::begin(mine), std::end(mine), out.batches[pushed % depth]);
        out.pushed.store(pushed + 1, std::memory_order_release);
        out.pushed.notify_one();
        const uint32_t popped = in.popped.load(std::memory_order_relaxed);
        for (uint32_t seen; (seen = in.pushed.load(std::memory_order_acquire)) == popped;) wait_change(in.pushed, seen);
        std::copy(std::begin(in.batches[popped % depth]), std::end(in.batches[popped % depth]), mine);
        in.popped.store(popped + 1, std::memory_order_release);
        in.popped.notify_one();
        t0 = now_ns();
        for (void* p : mine) alloc->raw_deallocate(p);
        spent += now_ns() - t0;
        times.push_back(static_cast<float>(spent) / kBatch);
      }
    }
    end[id] = now_ns();
  };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(threads));
  for (int i = 0; i < threads; ++i) pool.emplace_back(body, i);
  while (ready.load() != threads) std::this_thread::yield();
  const int64_t cpu0 = process_cpu_ns();
  const int64_t t0 = now_ns();
  go.store(1, std::memory_order_release);
  go.notify_all();
  for (std::thread& t : pool) t.join();
  const int64_t cpu1 = process_cpu_ns();
  std::vector<float> all;
  for (const auto& v : batch_ns) all.insert(all.end(), v.begin(), v.end());
  std::nth_element(all.begin(), all.begin() + all.size() / 2, all.end());
  // A plain map: the result becomes a dict once the GIL is held again.
  return {{"wall_ns", static_cast<double>(*std::max_element(end.begin(), end.end()) - t0)},
          {"cpu_ns", static_cast<double>(cpu1 - cpu0)},
          {"batch_ns", static_cast<double>(all[all.size() / 2])},
          {"pairs", static_cast<double>(pairs * threads)}};
}

// ---------------------------------------------------------------------------------------------
// A pool over a fake OS: addresses are real (heap memory), pools and failures are not.

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
  // placed as the allocator places it (make_plan, route; the default 1 GiB threshold).
  py::object alloc(size_t nbytes, int node, int kinds) {
    TORCH_CHECK_VALUE(nbytes > 0, "alloc: size must be positive");
    TORCH_CHECK_VALUE(topology_.has_node(node), "alloc: no node ", node);
    TORCH_CHECK_VALUE(kinds >= 0 && kinds <= kAllKinds, "alloc: invalid page kind mask ", kinds);
    pool_->set_small_kinds(static_cast<KindMask>(kinds));
    const Block b = pool_->allocate(nbytes, route(placement_, topology_, node, nbytes > kSmallMax),
                                    make_plan(static_cast<KindMask>(kinds), nbytes, kGiB));
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
  using hpa::FakePool;
  m.doc() = "Test and benchmark hooks of hugepage_allocator: a pool over a fake OS, hot-path timers";
  // Without the GIL: other Python threads run meanwhile (a fork test forks while it allocates).
  m.def("time_alloc_free", &hpa::time_alloc_free, py::arg("nbytes"), py::arg("rounds") = 31,
        py::arg("pairs") = 10000, py::call_guard<py::gil_scoped_release>(),
        "Nanoseconds per allocate+free pair of the current CPU allocator, one figure per round");
  m.def("time_threads", &hpa::time_threads, py::arg("nbytes"), py::arg("threads"), py::arg("pairs"),
        py::arg("cross") = false, py::call_guard<py::gil_scoped_release>(),
        "{wall_ns, cpu_ns, batch_ns, pairs} of `threads` C++ threads making `pairs` allocate+free pairs each");
  m.def("delete_ptr", [](uintptr_t ptr) { c10::GetCPUAllocator()->raw_deallocate(reinterpret_cast<void*>(ptr)); },
        "Calls the current CPU allocator's deleter on `ptr`, as PyTorch does when a storage dies (a "
        "wrong pointer stops the process)");
  m.def("lock_checks", [] {
#ifdef HPA_LOCK_CHECKS
    return true;
#else
    return false;
#endif
  }, "Whether this module's core counts system calls made under a pool lock (Note [Lock checks])");
  py::class_<FakePool>(m, "FakePool")
      .def(py::init<int, int, int64_t, int64_t, bool>(), py::arg("nodes") = 1, py::arg("cpus_per_node") = 2,
           py::arg("pages_2m") = 0, py::arg("pages_1g") = 0, py::arg("thp") = true)
      .def("alloc", &FakePool::alloc, py::arg("nbytes"), py::arg("node") = 0, py::arg("kinds") = hpa::kAllKinds)
      .def("alloc_exact", &FakePool::alloc_exact, py::arg("nbytes"), py::arg("kind"), py::arg("node") = 0)
      .def("free", &FakePool::free)
      .def("block_size", &FakePool::block_size)
      .def("release", [](FakePool& p) { return p.pool().release(); })
      .def("stats", [](FakePool& p) { return hpa::pool_stats(p.pool()); })
      .def("set_max_cached", [](FakePool& p, size_t n) { p.pool().set_max_cached(n); })
      .def("bind_thread_cache", [](FakePool& p, int node) { p.pool().bind_thread_cache(node); })
      .def("fork_child", &FakePool::fork_child,
           "Runs the fork handlers as the child would see them; returns the bytes copied for it")
      .def("fork_parent", &FakePool::fork_parent,
           "Runs the fork handlers as the parent would see them; returns the bytes copied for the child")
      .def("describe", [](FakePool& p, uintptr_t addr) { return p.pool().describe(reinterpret_cast<void*>(addr)); })
      .def("holds", [](FakePool& p, uintptr_t addr) { return p.pool().holds(reinterpret_cast<void*>(addr)); })
      .def("set_placement", &FakePool::set_placement, py::arg("mode"), py::arg("nodes") = 0)
      .def("set_thread_policy", [](FakePool& p, int policy, uint64_t nodes) {
        TORCH_CHECK_VALUE(policy >= 0 && policy <= 3, "set_thread_policy: policy 0..3");
        p.os().set_thread_policy(static_cast<hpa::MemPolicy>(policy), nodes);
      })
      .def("node_pages", [](FakePool& p, uintptr_t addr) { return p.os().node_pages(addr); },
           "2 MiB chunks of hugetlb memory per node behind the mapping holding `addr`")
      .def("policy_of", [](FakePool& p, uintptr_t addr) {
        const auto [policy, nodes] = p.os().policy_of(addr);
        return py::make_tuple(static_cast<int>(policy), nodes);
      }, "(MemPolicy number, node mask) the mapping holding `addr` was bound with")
      .def("set_free_pages", [](FakePool& p, int kind, int64_t n, int node) {
        p.os().set_free_pages(hpa::to_kind(kind), n, node);
      }, py::arg("kind"), py::arg("pages"), py::arg("node") = -1)
      .def("free_pages", [](FakePool& p, int kind, int node) {
        return p.os().free_pages(hpa::to_kind(kind), node);
      }, py::arg("kind"), py::arg("node") = -1)
      .def("fail_populate", [](FakePool& p, int n, int err) { p.os().fail_populate(n, err); })
      .def_property_readonly("map_calls", [](FakePool& p) { return p.os().map_calls(); })
      .def_property_readonly("unmap_calls", [](FakePool& p) { return p.os().unmap_calls(); })
      .def_property_readonly("live_mappings", [](FakePool& p) { return p.os().live_mappings(); })
      .def_property_readonly("mapped_bytes", [](FakePool& p) { return p.os().mapped_bytes(); })
      .def_property_readonly("bad_unmaps", [](FakePool& p) { return p.os().bad_unmaps(); })
      .def_property_readonly("calls_under_lock", [](FakePool& p) { return p.os().calls_under_lock(); },
                             "System calls the pool made while holding one of its locks (must stay 0)");
}
