#include "allocator.h"

#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

namespace hpa {
namespace {

// Above PyTorch's default (0), so that a later default-priority SetCPUAllocator cannot silently
// take over from an installed pool.
constexpr uint8_t kInstallPriority = 1;

HugePageAllocator* g_self = nullptr;

const c10::Device kCpu(c10::DeviceType::CPU);

std::string human_bytes(size_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024.0 && u < 6) {
    v /= 1024.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.2f %s", v, units[u]);
  return buf;
}

// The profiler's hooks may allocate and throw; a deleter must not.
void report_to_profiler(void* ptr, int64_t delta, const Pool& pool) noexcept {
  try {
    c10::reportMemoryUsageToProfiler(ptr, delta, static_cast<size_t>(pool.approx_allocated_bytes()),
                                     static_cast<size_t>(pool.reserved_bytes().current.load()), kCpu);
  } catch (...) {
  }
}

}  // namespace

HugePageAllocator& HugePageAllocator::get() {
  static HugePageAllocator* self = [] {
    auto* a = new HugePageAllocator();
    g_self = a;
    ForkHandler::register_atfork(&a->fork_);
    return a;
  }();
  return *self;
}

HugePageAllocator::HugePageAllocator()
    : os_(real_os()),
      topology_(os_),
      pool_(os_, topology_, /*arena_slot=*/0),
      shared_(os_),
      fork_(os_, pool_, &shared_),
      min_size_(Settings{}.min_size),
      huge_1g_min_size_(Settings{}.huge_1g_min_size),
      kinds_(Settings{}.kinds),
      previous_(c10::GetDefaultCPUAllocator()),
      previous_deleter_(c10::GetDefaultCPUAllocator()->raw_deleter()) {}

void HugePageAllocator::configure(const Settings& s) {
  TORCH_CHECK_VALUE((s.kinds & ~kAllKinds) == 0, "hugepage_allocator: invalid page kind mask ",
                    static_cast<int>(s.kinds));
  min_size_.store(s.min_size, std::memory_order_relaxed);
  huge_1g_min_size_.store(s.huge_1g_min_size, std::memory_order_relaxed);
  kinds_.store(s.kinds, std::memory_order_relaxed);
  pool_.set_small_kinds(s.kinds);
  pool_.set_max_cached(s.max_cached);
  shared_.set_max_idle(s.max_shared_cached);
  const Placement p = effective_placement(os_, topology_, s.follow_process_policy, s.placement);
  TORCH_CHECK_VALUE((p.nodes & ~topology_.node_mask()) == 0, "hugepage_allocator: numa_policy ",
                    describe(p, topology_), " names a node that is not online (online: ",
                    node_list(topology_.node_mask()), ")");
  numa_nodes_.store(p.nodes, std::memory_order_relaxed);
  numa_mode_.store(static_cast<uint8_t>(p.mode), std::memory_order_relaxed);
  pool_.set_binding(p.mode == NumaMode::kBind, p.mode == NumaMode::kInterleave ? p.nodes : 0);
}

void HugePageAllocator::install(const Settings& s) {
  static std::mutex install_mu;  // install() from several threads at once
  std::lock_guard<std::mutex> lock(install_mu);
  c10::Allocator* current = c10::GetCPUAllocator();
  if (current != this) {
    static bool captured = false;  // the first previous allocator stays in charge of foreign pointers
    if (!captured) {
      c10::DeleterFnPtr deleter = current->raw_deleter();
      TORCH_CHECK(deleter != nullptr,
                  "hugepage_allocator: install() refused: the current CPU allocator has no raw "
                  "deleter, so pointers it made could not be freed through this allocator");
      previous_.store(current, std::memory_order_relaxed);
      previous_deleter_.store(deleter, std::memory_order_relaxed);
      captured = true;
    }
    configure(s);
    c10::SetCPUAllocator(this, kInstallPriority);
    TORCH_CHECK(c10::GetCPUAllocator() == this,
                "hugepage_allocator: install() failed: another CPU allocator was installed with a "
                "priority above ", static_cast<int>(kInstallPriority),
                " (c10::SetCPUAllocator refuses lower priorities without saying so)");
  } else {
    configure(s);
  }
  serving_.store(true, std::memory_order_release);
}

bool HugePageAllocator::is_installed() const {
  return serving_.load(std::memory_order_acquire) && c10::GetCPUAllocator() == this;
}

Plan HugePageAllocator::plan_for(size_t nbytes) const {
  return make_plan(kinds_.load(std::memory_order_relaxed), nbytes, huge_1g_min_size_.load(std::memory_order_relaxed));
}

int HugePageAllocator::current_node() const {
  if (topology_.num_nodes() == 1) return topology_.nodes().front();
  return topology_.node_of_cpu(os_.current_cpu());
}

Route HugePageAllocator::route_for(size_t nbytes) const {
  if (topology_.num_nodes() == 1) return {topology_.nodes().front(), 0};
  return route(placement(), topology_, current_node(), nbytes > kSmallMax);
}

c10::DataPtr HugePageAllocator::allocate(size_t nbytes) {
  if (nbytes == 0) return {nullptr, nullptr, &delete_ptr, kCpu};
  if (!serving_.load(std::memory_order_acquire) || nbytes < min_size_.load(std::memory_order_relaxed)) {
    c10::Allocator* previous = previous_.load(std::memory_order_relaxed);
    if (serving_.load(std::memory_order_relaxed)) num_passthrough_.fetch_add(1, std::memory_order_relaxed);
    return previous->allocate(nbytes);
  }
  const Plan plan = nbytes > kSmallMax ? plan_for(nbytes) : Plan{};  // small ones need none
  const Route r = route_for(nbytes);
  const Block b = pool_.allocate(nbytes, r, plan);
  if (b.ptr == nullptr) out_of_memory(nbytes, r.home, plan);
  return wrap(b);
}

c10::DataPtr HugePageAllocator::allocate_on(size_t nbytes, PageKind kind, int node) {
  TORCH_CHECK_VALUE(topology_.has_node(node), "hugepage_allocator: node ", node,
                    " is not an online NUMA node of this system");
  if (nbytes == 0) return {nullptr, nullptr, &delete_ptr, kCpu};
  const Block b = pool_.allocate_exact(nbytes, kind, node);
  if (b.ptr == nullptr) {
    Plan plan;
    plan.add(kind);
    out_of_memory(nbytes, node, plan);
  }
  return wrap(b);
}

c10::DataPtr HugePageAllocator::wrap(const Block& b) {
  c10::DataPtr data(b.ptr, b.ptr, &delete_ptr, kCpu);
  if (c10::memoryProfilingEnabled()) report_to_profiler(b.ptr, static_cast<int64_t>(b.size), pool_);
  return data;
}

void HugePageAllocator::delete_ptr(void* ptr) {
  if (ptr == nullptr) return;
  HugePageAllocator& self = *g_self;
  const size_t size = self.pool_.free(ptr);
  if (size == 0) {
    self.delete_foreign(ptr);
    return;
  }
  if (c10::memoryProfilingEnabled()) report_to_profiler(ptr, -static_cast<int64_t>(size), self.pool_);
}

void HugePageAllocator::delete_foreign(void* ptr) {
  // Note [Foreign pointers].
  const uintptr_t addr = reinterpret_cast<uintptr_t>(ptr);
  const char* why = nullptr;
  if (pool_.holds(ptr)) {
    why = "it is not a block in use";
  } else if (pool_.source().retired().find(addr).second != 0 && !os_.is_mapped(ptr)) {
    why = "nothing is mapped there any more";
  }
  if (why == nullptr) {
    previous_deleter_.load(std::memory_order_relaxed)(ptr);  // not ours: made before install()
    return;
  }
  const std::string message = "hugepage_allocator: fatal: a tensor's memory at " +
                              c10::str(ptr) + " was freed through this allocator, but " + why +
                              ": " + pool_.describe(ptr) +
                              ". Likely a double free or a pointer into the middle of a block. "
                              "Stopping here: handing it to another allocator would corrupt that "
                              "allocator's heap far from the cause.\n";
  (void)!::write(STDERR_FILENO, message.data(), message.size());
  std::abort();
}

c10::DataPtr HugePageAllocator::wrap_shared(SharedRegion* r) {
  return c10::DataPtr(SharedMemory::data(r), r, &delete_shared, kCpu);
}

void HugePageAllocator::delete_shared(void* region) {
  g_self->shared_.release(static_cast<SharedRegion*>(region));
}

SharedRegion* HugePageAllocator::shared_region_of(const c10::Storage& storage) {
  const c10::DataPtr& d = storage.data_ptr();
  return d.get_deleter() == &delete_shared ? static_cast<SharedRegion*>(d.get_context()) : nullptr;
}

Plan HugePageAllocator::shared_plan(size_t nbytes) const {
  if (nbytes >= SharedMemory::kHugeMinSize) return plan_for(nbytes);
  Plan plan;  // a small region would waste most of a huge page
  plan.add(PageKind::kBase);
  return plan;
}

c10::DataPtr HugePageAllocator::shared_data(size_t nbytes) {
  int error = 0;
  const int node = topology_.num_nodes() > 1 ? current_node() : -1;
  SharedRegion* r = shared_.create(nbytes, shared_plan(nbytes), node, &error);
  return r == nullptr ? c10::DataPtr() : wrap_shared(r);
}

c10::Storage HugePageAllocator::new_shared(size_t nbytes) {
  c10::DataPtr data = shared_data(nbytes);
  if (!data) return c10::Storage();
  return c10::Storage(c10::Storage::use_byte_size_t(), nbytes, std::move(data), /*allocator=*/nullptr,
                      /*resizable=*/false);
}

bool HugePageAllocator::move_to_shared(const c10::Storage& storage) {
  const size_t nbytes = storage.nbytes();
  c10::DataPtr data = shared_data(nbytes);
  if (!data) return false;
  std::memcpy(data.get(), storage.data(), nbytes);
  c10::StorageImpl* impl = storage.unsafeGetStorageImpl();
  impl->set_data_ptr_noswap(std::move(data));
  impl->set_allocator(nullptr);
  impl->set_resizable(false);
  return true;
}

c10::Storage HugePageAllocator::receive_shared(int fd, size_t nbytes, size_t size) {
  TORCH_CHECK_VALUE(nbytes + SharedMemory::kControlBytes <= size, "hugepage_allocator: a shared storage of ",
                    nbytes, " bytes cannot lie in a region of ", size, " bytes");
  int error = 0;
  SharedRegion* r = shared_.receive(fd, size, &error);
  TORCH_CHECK(r != nullptr, "hugepage_allocator: cannot map the shared memory another process sent (fd ", fd,
              ", ", size, " bytes): ", std::strerror(error),
              error == EINVAL ? " (not a region of this allocator, or not of the size sent)" : "");
  return c10::Storage(c10::Storage::use_byte_size_t(), nbytes, wrap_shared(r), /*allocator=*/nullptr,
                      /*resizable=*/false);
}

void HugePageAllocator::out_of_memory(size_t nbytes, int node, const Plan& given) {
  const Plan plan = given.count > 0 ? given : plan_for(nbytes);  // small requests come without one
  num_ooms_.fetch_add(1, std::memory_order_relaxed);
  const size_t allocated = static_cast<size_t>(pool_.allocated_bytes().bytes.current);
  const size_t reserved = static_cast<size_t>(pool_.reserved_bytes().current.load());
  try {
    c10::reportOutOfMemoryToProfiler(static_cast<int64_t>(nbytes), allocated, reserved, kCpu);
  } catch (...) {
  }
  std::string tried;
  for (int i = 0; i < plan.count; ++i) {
    const PageKind k = plan.kinds[i];
    const int err = pool_.source().last_error(k);
    tried += std::string(i ? ", " : "") + page_kind_name(k) + " (" +
             (err ? std::strerror(err) : "no fit") + ")";
  }
  const NodeMask interleaved = placement().nodes != 0 ? placement().nodes : topology_.node_mask();
  const std::string where = node == kInterleaveNode ? "interleaved over NUMA nodes " + node_list(interleaved)
                                                    : "on NUMA node " + std::to_string(node);
  TORCH_CHECK_WITH(OutOfMemoryError, false, "hugepage_allocator: out of memory: tried to allocate ",
                   nbytes, " bytes (", human_bytes(nbytes), ") ", where,
                   "; every page kind allowed failed: ", tried, ". This allocator holds ",
                   human_bytes(allocated), " allocated and ", human_bytes(reserved),
                   " reserved. For more explicit huge pages, raise "
                   "/sys/kernel/mm/hugepages/hugepages-*/nr_hugepages");
}

}  // namespace hpa
