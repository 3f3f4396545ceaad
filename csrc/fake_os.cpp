#include "fake_os.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace hpa {

FakeOs::FakeOs(int nodes, int cpus_per_node, int64_t pages_2m, int64_t pages_1g, bool thp)
    : nodes_(nodes), cpus_per_node_(cpus_per_node), thp_(thp), free_2m_(pages_2m), free_1g_(pages_1g) {}

FakeOs::~FakeOs() {
  for (auto& [addr, m] : mappings_) std::free(m.memory);
}

MapResult FakeOs::take(size_t size, size_t align, int64_t pages_2m, int64_t pages_1g) {
  std::lock_guard<std::mutex> lock(mu_);
  ++map_calls_;
  if (pages_2m > free_2m_ || pages_1g > free_1g_) return {nullptr, ENOMEM};
  if (size > (size_t{1} << 40)) return {nullptr, ENOMEM};
  // posix_memalign, not aligned_alloc: a composite size (1 GiB + a 2 MiB tail) is not a multiple
  // of its alignment, which aligned_alloc does not allow.
  void* memory = nullptr;
  if (posix_memalign(&memory, align, size) != 0) return {nullptr, ENOMEM};
  free_2m_ -= pages_2m;
  free_1g_ -= pages_1g;
  mappings_[reinterpret_cast<uintptr_t>(memory)] =
      Mapping{size, pages_2m, pages_1g, memory, std::vector<bool>(size / k2MiB, false), size};
  return {memory, 0};
}

MapResult FakeOs::map(PageKind kind, size_t size) {
  if (size == 0 || size % page_kind_unit(kind) != 0) return {nullptr, EINVAL};
  switch (kind) {
    case PageKind::kHugetlb1G: return take(size, kGiB, 0, static_cast<int64_t>(size / kGiB));
    case PageKind::kHugetlb2M: return take(size, k2MiB, static_cast<int64_t>(size / k2MiB), 0);
    case PageKind::kThp:
    case PageKind::kBase: return take(size, k2MiB, 0, 0);
  }
  return {nullptr, EINVAL};
}

MapResult FakeOs::map_composite(size_t head, size_t tail) {
  if (head == 0 || head % kGiB != 0 || tail % k2MiB != 0) return {nullptr, EINVAL};
  return take(head + tail, kGiB, static_cast<int64_t>(tail / k2MiB), static_cast<int64_t>(head / kGiB));
}

int FakeOs::unmap(void* addr, size_t size) {
  // Like munmap: any 2 MiB-aligned part of a mapping, in any order; a mapping whose parts are
  // all gone is freed.
  std::lock_guard<std::mutex> lock(mu_);
  ++unmap_calls_;
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  auto it = mappings_.upper_bound(a);
  if (it == mappings_.begin()) {
    ++bad_unmaps_;
    return EINVAL;
  }
  --it;
  Mapping& m = it->second;
  const uintptr_t off = a - it->first;
  if (size == 0 || off % k2MiB != 0 || size % k2MiB != 0 || off + size > m.size) {
    ++bad_unmaps_;
    return EINVAL;
  }
  for (size_t c = off / k2MiB; c < (off + size) / k2MiB; ++c) {
    if (m.gone[c]) {
      ++bad_unmaps_;
      return EINVAL;
    }
  }
  for (size_t c = off / k2MiB; c < (off + size) / k2MiB; ++c) m.gone[c] = true;
  m.live -= size;
  if (m.pages_1g > 0) {  // composite: its pages come back with the last part
    if (m.live == 0) {
      free_1g_ += m.pages_1g;
      free_2m_ += m.pages_2m;
    }
  } else if (m.pages_2m > 0) {
    free_2m_ += static_cast<int64_t>(size / k2MiB);
  }
  if (m.live == 0) {
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

int FakeOs::populate(void* addr, size_t size) {
  std::lock_guard<std::mutex> lock(mu_);
  if (populate_failures_ > 0) {
    --populate_failures_;
    return populate_error_;
  }
  return 0;
}

int FakeOs::bind_to_node(void*, size_t, int node, bool) { return node >= 0 && node < nodes_ ? 0 : EINVAL; }

int FakeOs::read_file(const char* path, std::string* out) {
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
  if (p == "/sys/kernel/mm/transparent_hugepage/enabled") {
    *out = thp_ ? "always [madvise] never\n" : "always madvise [never]\n";
    return 0;
  }
  return ENOENT;
}

void FakeOs::set_free_pages(PageKind kind, int64_t pages) {
  std::lock_guard<std::mutex> lock(mu_);
  (kind == PageKind::kHugetlb1G ? free_1g_ : free_2m_) = pages;
}

int64_t FakeOs::free_pages(PageKind kind) const {
  std::lock_guard<std::mutex> lock(mu_);
  return kind == PageKind::kHugetlb1G ? free_1g_ : free_2m_;
}

size_t FakeOs::mapped_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t total = 0;
  for (const auto& [addr, m] : mappings_) total += m.live;
  return total;
}

}  // namespace hpa
