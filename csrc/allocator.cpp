#include "allocator.h"

#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <pthread.h>

#include <cstring>
#include <string>

namespace hpa {
namespace {

// Above PyTorch's default (0), so that a later default-priority SetCPUAllocator cannot silently
// take over from an installed pool.
constexpr uint8_t kInstallPriority = 1;

HugePageAllocator* g_self = nullptr;

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

}  // namespace

HugePageAllocator& HugePageAllocator::get() {
  static HugePageAllocator* self = [] {
    auto* a = new HugePageAllocator();
    g_self = a;
    // Note [Fork]: a child must not inherit a pool lock held by another thread of the parent.
    pthread_atfork([] { g_self->pool_.lock_all(); }, [] { g_self->pool_.unlock_all(); },
                   [] { g_self->pool_.unlock_all(); });
    return a;
  }();
  return *self;
}

HugePageAllocator::HugePageAllocator()
    : os_(real_os()),
      topology_(os_),
      pool_(os_, topology_),
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
}

Settings HugePageAllocator::settings() const {
  Settings s;
  s.min_size = min_size_.load(std::memory_order_relaxed);
  s.huge_1g_min_size = huge_1g_min_size_.load(std::memory_order_relaxed);
  s.kinds = kinds_.load(std::memory_order_relaxed);
  return s;
}

void HugePageAllocator::install(const Settings& s) {
  configure(s);
  c10::Allocator* current = c10::GetCPUAllocator();
  if (current != this) {
    static bool captured = false;  // the first previous allocator stays in charge of foreign pointers
    if (!captured) {
      previous_ = current;
      if (c10::DeleterFnPtr d = current->raw_deleter()) previous_deleter_.store(d);
      captured = true;
    }
    c10::SetCPUAllocator(this, kInstallPriority);
    TORCH_CHECK(c10::GetCPUAllocator() == this,
                "hugepage_allocator: install() failed: another CPU allocator was installed with a "
                "priority above ", static_cast<int>(kInstallPriority),
                " (c10::SetCPUAllocator refuses lower priorities without saying so)");
  }
  serving_.store(true, std::memory_order_release);
}

bool HugePageAllocator::is_installed() const {
  return serving_.load(std::memory_order_acquire) && c10::GetCPUAllocator() == this;
}

Plan HugePageAllocator::plan_for(size_t nbytes) const {
  const KindMask mask = kinds_.load(std::memory_order_relaxed);
  Plan plan;
  if ((mask & kind_bit(PageKind::kHugetlb1G)) &&
      nbytes >= huge_1g_min_size_.load(std::memory_order_relaxed))
    plan.add(PageKind::kHugetlb1G);
  for (PageKind k : {PageKind::kHugetlb2M, PageKind::kThp, PageKind::kBase})
    if (mask & kind_bit(k)) plan.add(k);
  return plan;
}

int HugePageAllocator::current_node() const {
  if (topology_.num_nodes() == 1) return topology_.nodes().front();
  return topology_.node_of_cpu(os_.current_cpu());
}

c10::DataPtr HugePageAllocator::allocate(size_t nbytes) {
  if (nbytes == 0) return {nullptr, nullptr, &delete_ptr, c10::Device(c10::DeviceType::CPU)};
  if (!serving_.load(std::memory_order_acquire)) return previous_->allocate(nbytes);
  const Plan plan = plan_for(nbytes);
  if (nbytes < min_size_.load(std::memory_order_relaxed) || plan.count == 0) {
    num_passthrough_.fetch_add(1, std::memory_order_relaxed);
    return previous_->allocate(nbytes);
  }
  const int node = current_node();
  Block* b = pool_.allocate(nbytes, node, plan);
  if (b == nullptr) out_of_memory(nbytes, node, plan);
  return wrap(b, nbytes);
}

c10::DataPtr HugePageAllocator::allocate_on(size_t nbytes, PageKind kind, int node) {
  TORCH_CHECK_VALUE(topology_.has_node(node), "hugepage_allocator: node ", node,
                    " is not an online NUMA node of this system");
  if (nbytes == 0) return {nullptr, nullptr, &delete_ptr, c10::Device(c10::DeviceType::CPU)};
  Plan plan;
  plan.add(kind);
  Block* b = pool_.allocate(nbytes, node, plan);
  if (b == nullptr) out_of_memory(nbytes, node, plan);
  return wrap(b, nbytes);
}

c10::DataPtr HugePageAllocator::wrap(Block* b, size_t nbytes) {
  void* p = reinterpret_cast<void*>(b->start.load(std::memory_order_relaxed));
  if (c10::memoryProfilingEnabled()) {
    const GlobalStats& g = pool_.global_stats();
    c10::reportMemoryUsageToProfiler(p, static_cast<int64_t>(nbytes),
                                     static_cast<size_t>(g.allocated_bytes.current.load()),
                                     static_cast<size_t>(g.reserved_bytes.current.load()),
                                     c10::Device(c10::DeviceType::CPU));
  }
  return {p, p, &delete_ptr, c10::Device(c10::DeviceType::CPU)};
}

void HugePageAllocator::delete_ptr(void* ptr) {
  if (ptr == nullptr) return;
  HugePageAllocator& self = *g_self;
  Block* b = self.pool_.lookup(ptr);
  if (b == nullptr) {
    self.previous_deleter_.load(std::memory_order_relaxed)(ptr);  // not ours: made before install()
    return;
  }
  if (c10::memoryProfilingEnabled()) {
    const GlobalStats& g = self.pool_.global_stats();
    c10::reportMemoryUsageToProfiler(ptr, -static_cast<int64_t>(b->requested),
                                     static_cast<size_t>(g.allocated_bytes.current.load()) - b->size,
                                     static_cast<size_t>(g.reserved_bytes.current.load()),
                                     c10::Device(c10::DeviceType::CPU));
  }
  self.pool_.free(b);
}

void HugePageAllocator::out_of_memory(size_t nbytes, int node, const Plan& plan) {
  num_ooms_.fetch_add(1, std::memory_order_relaxed);
  const GlobalStats& g = pool_.global_stats();
  const size_t allocated = static_cast<size_t>(g.allocated_bytes.current.load());
  const size_t reserved = static_cast<size_t>(g.reserved_bytes.current.load());
  c10::reportOutOfMemoryToProfiler(static_cast<int64_t>(nbytes), allocated, reserved,
                                   c10::Device(c10::DeviceType::CPU));
  std::string tried;
  for (int i = 0; i < plan.count; ++i) {
    const PageKind k = plan.kinds[i];
    const int err = pool_.source().last_error(k);
    tried += std::string(i ? ", " : "") + page_kind_name(k) + " (" +
             (err ? std::strerror(err) : "no fit") + ")";
  }
  TORCH_CHECK_WITH(OutOfMemoryError, false, "hugepage_allocator: out of memory: tried to allocate ",
                   nbytes, " bytes (", human_bytes(nbytes), ") on NUMA node ", node,
                   "; every page kind allowed failed: ", tried, ". This allocator holds ",
                   human_bytes(allocated), " allocated and ", human_bytes(reserved),
                   " reserved. For more explicit huge pages, raise "
                   "/sys/kernel/mm/hugepages/hugepages-*/nr_hugepages");
}

}  // namespace hpa
