#include "fake_os.h"

#include <algorithm>
#include <chrono>
#include <thread>
#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace hpa {

FakeOs::FakeOs(int nodes, int cpus_per_node, int64_t pages_2m, int64_t pages_1g, bool thp)
    : nodes_(nodes),
      cpus_per_node_(cpus_per_node),
      thp_(thp),
      free_2m_(static_cast<size_t>(std::max(nodes, 1)), pages_2m),
      free_1g_(static_cast<size_t>(std::max(nodes, 1)), pages_1g) {}

FakeOs::~FakeOs() {
  for (auto& [addr, m] : mappings_) std::free(m.memory);
}

int64_t FakeOs::total_free(PageKind kind) const {
  const std::vector<int64_t>& f = kind == PageKind::kHugetlb1G ? free_1g_ : free_2m_;
  int64_t total = 0;
  for (int64_t n : f) total += n;
  return total;
}

void FakeOs::system_call() {
  if (!no_lock_held()) calls_under_lock_.fetch_add(1, std::memory_order_relaxed);
}

MapResult FakeOs::take(size_t size, size_t align, size_t head_1g, bool hugetlb) {
  system_call();
  if (const int us = map_delay_us_.load(std::memory_order_relaxed)) std::this_thread::sleep_for(std::chrono::microseconds(us));
  std::lock_guard<std::mutex> lock(mu_);
  ++map_calls_;
  if (size > (size_t{1} << 40)) return {nullptr, ENOMEM};
  const int64_t need_1g = hugetlb ? static_cast<int64_t>(head_1g / kGiB) : 0;
  const int64_t need_2m = hugetlb ? static_cast<int64_t>((size - head_1g) / k2MiB) : 0;
  // Reserved at mmap time from the total over all nodes, as the kernel does.
  if (need_2m > total_free(PageKind::kHugetlb2M) - reserved_2m_ ||
      need_1g > total_free(PageKind::kHugetlb1G) - reserved_1g_)
    return {nullptr, ENOMEM};
  // posix_memalign, not aligned_alloc: a composite size (1 GiB + a 2 MiB tail) is not a multiple
  // of its alignment, which aligned_alloc does not allow.
  void* memory = nullptr;
  if (posix_memalign(&memory, align, size) != 0) return {nullptr, ENOMEM};
  reserved_2m_ += need_2m;
  reserved_1g_ += need_1g;
  const size_t chunks = size / k2MiB;
  mappings_[reinterpret_cast<uintptr_t>(memory)] =
      Mapping{size, head_1g, hugetlb, memory, std::vector<bool>(chunks, false),
              std::vector<int8_t>(chunks, kNoPage), need_2m, need_1g, size};
  return {memory, 0};
}

MapResult FakeOs::map(PageKind kind, size_t size) {
  if (size == 0 || size % page_kind_unit(kind) != 0) return {nullptr, EINVAL};
  switch (kind) {
    case PageKind::kHugetlb1G: return take(size, kGiB, size, true);
    case PageKind::kHugetlb2M: return take(size, k2MiB, 0, true);
    case PageKind::kThp:
    case PageKind::kBase: return take(size, k2MiB, 0, false);
  }
  return {nullptr, EINVAL};
}

MapResult FakeOs::map_composite(size_t head, size_t tail) {
  if (head == 0 || head % kGiB != 0 || tail % k2MiB != 0) return {nullptr, EINVAL};
  return take(head + tail, kGiB, head, true);
}

std::map<uintptr_t, FakeOs::Mapping>::const_iterator FakeOs::find(uintptr_t a) const {
  auto it = mappings_.upper_bound(a);
  if (it == mappings_.begin()) return mappings_.end();
  --it;
  return a < it->first + it->second.size ? it : mappings_.end();
}

int FakeOs::unmap(void* addr, size_t size) {
  // Like munmap: any 2 MiB-aligned part of a mapping, in any order; a mapping whose parts are
  // all gone is freed, and the pages behind each part go back to their nodes.
  system_call();
  std::lock_guard<std::mutex> lock(mu_);
  ++unmap_calls_;
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  auto found = find(a);
  if (found == mappings_.end()) {
    ++bad_unmaps_;
    return EINVAL;
  }
  auto it = mappings_.find(found->first);
  Mapping& m = it->second;
  const uintptr_t off = a - it->first;
  if (size == 0 || off % k2MiB != 0 || size % k2MiB != 0 || off + size > m.size) {
    ++bad_unmaps_;
    return EINVAL;
  }
  const size_t first = off / k2MiB, last = (off + size) / k2MiB;
  for (size_t c = first; c < last; ++c) {
    if (m.gone[c]) {
      ++bad_unmaps_;
      return EINVAL;
    }
  }
  const size_t head_chunks = m.head_1g / k2MiB;
  for (size_t c = first; c < last; ++c) {
    m.gone[c] = true;
    if (!m.hugetlb || c < head_chunks) continue;  // 1 GiB pages come back with the last part
    if (m.node[c] != kNoPage) {
      ++free_2m_[m.node[c]];
    } else {
      --m.reserved_2m;
      --reserved_2m_;
    }
  }
  m.live -= size;
  if (m.live == 0) {
    for (size_t c = 0; c < head_chunks; c += kGiB / k2MiB)
      if (m.node[c] != kNoPage) ++free_1g_[m.node[c]];
    reserved_2m_ -= m.reserved_2m;
    reserved_1g_ -= m.reserved_1g;
    std::free(m.memory);
    mappings_.erase(it);
  }
  return 0;
}

MapResult FakeOs::map_copy(const void* src, size_t size) {
  MapResult r = map(PageKind::kBase, (size + k2MiB - 1) / k2MiB * k2MiB);
  if (r.addr != nullptr) std::memcpy(r.addr, src, size);
  return r;
}

int FakeOs::move_mapping(void* from, void* to, size_t size) {
  std::memmove(to, from, size);
  return unmap(from, (size + k2MiB - 1) / k2MiB * k2MiB);
}

namespace {

// Nodes ordered by distance from `origin` on the fake's line topology, then by id.
std::vector<int> nodes_from(int origin, int nodes) {
  std::vector<int> order(static_cast<size_t>(nodes));
  for (int i = 0; i < nodes; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return std::abs(a - origin) < std::abs(b - origin); });
  return order;
}

}  // namespace

int FakeOs::pick_node(const Mapping& m, PageKind kind) {
  std::vector<int64_t>& f = kind == PageKind::kHugetlb1G ? free_1g_ : free_2m_;
  const int local = std::clamp(cpu_ / std::max(cpus_per_node_, 1), 0, nodes_ - 1);
  auto first_free = [&](int origin, NodeMask allowed) {
    for (int n : nodes_from(origin, nodes_))
      if ((allowed & node_bit(n)) && f[n] > 0) return n;
    return static_cast<int>(kNoPage);
  };
  const NodeMask all = nodes_ >= 64 ? ~NodeMask{0} : (node_bit(nodes_) - 1);
  switch (m.policy) {
    case MemPolicy::kDefault: return first_free(local, all);
    case MemPolicy::kBind: return first_free(local, m.policy_nodes);
    case MemPolicy::kPreferred: return first_free(__builtin_ctzll(m.policy_nodes), all);
    case MemPolicy::kInterleave: {
      std::vector<int> members;
      for (int n = 0; n < nodes_; ++n)
        if (m.policy_nodes & node_bit(n)) members.push_back(n);
      const size_t start = interleave_next_++ % members.size();
      for (size_t i = 0; i < members.size(); ++i) {
        const int n = members[(start + i) % members.size()];
        if (f[n] > 0) return n;
      }
      return first_free(local, all);
    }
  }
  return kNoPage;
}

int FakeOs::populate(void* addr, size_t size) {
  system_call();
  std::lock_guard<std::mutex> lock(mu_);
  if (populate_failures_ > 0) {
    --populate_failures_;
    return populate_error_;
  }
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  auto found = find(a);
  if (found == mappings_.end()) return ENOMEM;
  Mapping& m = mappings_.find(found->first)->second;
  if (!m.hugetlb) return 0;
  const size_t head_chunks = m.head_1g / k2MiB;
  const size_t first = (a - found->first) / k2MiB;
  const size_t last = std::min(m.node.size(), first + (size + k2MiB - 1) / k2MiB);
  for (size_t c = first; c < last; ++c) {
    if (m.node[c] != kNoPage || m.gone[c]) continue;
    const PageKind kind = c < head_chunks ? PageKind::kHugetlb1G : PageKind::kHugetlb2M;
    const int node = pick_node(m, kind);
    if (node == kNoPage) return ENOMEM;  // bound to nodes that have none: the fault fails
    if (kind == PageKind::kHugetlb1G) {
      const size_t page = c / (kGiB / k2MiB) * (kGiB / k2MiB);
      for (size_t i = page; i < page + kGiB / k2MiB; ++i) m.node[i] = static_cast<int8_t>(node);
      --free_1g_[node];
      --m.reserved_1g;
      --reserved_1g_;
    } else {
      m.node[c] = static_cast<int8_t>(node);
      --free_2m_[node];
      --m.reserved_2m;
      --reserved_2m_;
    }
  }
  return 0;
}

int FakeOs::set_policy(void* addr, size_t, MemPolicy policy, NodeMask nodes) {
  system_call();
  std::lock_guard<std::mutex> lock(mu_);
  const NodeMask all = nodes_ >= 64 ? ~NodeMask{0} : (node_bit(nodes_) - 1);
  if (nodes == 0 || (nodes & ~all) != 0 || policy == MemPolicy::kDefault) return EINVAL;
  auto found = find(reinterpret_cast<uintptr_t>(addr));
  if (found == mappings_.end()) return EFAULT;
  Mapping& m = mappings_.find(found->first)->second;
  m.policy = policy;
  m.policy_nodes = policy == MemPolicy::kPreferred ? (nodes & ~(nodes - 1)) : nodes;
  return 0;
}

int FakeOs::thread_policy(MemPolicy* policy, NodeMask* nodes) {
  system_call();
  *policy = policy_;
  *nodes = policy_nodes_;
  return 0;
}

std::vector<int64_t> FakeOs::node_pages(uintptr_t addr) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<int64_t> out;
  auto found = find(addr);
  if (found == mappings_.end()) return out;
  out.assign(static_cast<size_t>(nodes_), 0);
  const Mapping& m = found->second;
  for (size_t c = 0; c < m.node.size(); ++c)
    if (!m.gone[c] && m.node[c] != kNoPage) ++out[m.node[c]];
  return out;
}

std::pair<MemPolicy, NodeMask> FakeOs::policy_of(uintptr_t addr) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto found = find(addr);
  if (found == mappings_.end()) return {MemPolicy::kDefault, 0};
  return {found->second.policy, found->second.policy_nodes};
}

int64_t FakeOs::hugetlb_free(PageKind kind, int node) {
  system_call();
  std::lock_guard<std::mutex> lock(mu_);
  if (node >= 0) return node < nodes_ ? (kind == PageKind::kHugetlb1G ? free_1g_ : free_2m_)[node] : 0;
  return total_free(kind) - (kind == PageKind::kHugetlb1G ? reserved_1g_ : reserved_2m_);
}

bool FakeOs::is_mapped(const void* addr) {
  system_call();
  std::lock_guard<std::mutex> lock(mu_);
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  auto found = find(a);
  return found != mappings_.end() && !found->second.gone[(a - found->first) / k2MiB];
}

int FakeOs::read_file(const char* path, std::string* out) {
  system_call();
  const std::string p = path;
  if (p == "/sys/devices/system/node/online") {
    *out = nodes_ == 1 ? "0\n" : "0-" + std::to_string(nodes_ - 1) + "\n";
    return 0;
  }
  const std::string prefix = "/sys/devices/system/node/node";
  if (p.rfind(prefix, 0) == 0 && p.size() > prefix.size() + 8 && p.substr(p.size() - 8) == "/cpulist") {
    const int node = std::atoi(p.c_str() + prefix.size());
    const int first = node * cpus_per_node_;
    *out = std::to_string(first) + "-" + std::to_string(first + cpus_per_node_ - 1) + "\n";
    return 0;
  }
  if (p.rfind(prefix, 0) == 0 && p.size() > prefix.size() + 9 && p.substr(p.size() - 9) == "/distance") {
    const int node = std::atoi(p.c_str() + prefix.size());
    out->clear();
    for (int j = 0; j < nodes_; ++j) out->append((j ? " " : "") + std::to_string(10 + 10 * std::abs(node - j)));
    out->append("\n");
    return 0;
  }
  if (p == "/sys/kernel/mm/transparent_hugepage/enabled") {
    *out = thp_ ? "always [madvise] never\n" : "always madvise [never]\n";
    return 0;
  }
  return ENOENT;
}

void FakeOs::set_free_pages(PageKind kind, int64_t pages, int node) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<int64_t>& f = kind == PageKind::kHugetlb1G ? free_1g_ : free_2m_;
  for (int n = 0; n < nodes_; ++n)
    if (node < 0 || n == node) f[n] = pages;
}

int64_t FakeOs::free_pages(PageKind kind, int node) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (node >= 0) return node < nodes_ ? (kind == PageKind::kHugetlb1G ? free_1g_ : free_2m_)[node] : 0;
  return total_free(kind);
}

size_t FakeOs::mapped_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t total = 0;
  for (const auto& [addr, m] : mappings_) total += m.live;
  return total;
}

}  // namespace hpa
