// Shared regions: creation with fallback, reuse by the owner and by receivers, and the counts in
// each region's control block. See Note [Shared memory] (shared_memory.h).
#include "shared_memory.h"

#include <algorithm>
#include <cerrno>
#include <new>
#include <string>

namespace hpa {

namespace {

constexpr uint64_t kMagic = 0x316d68732d617068;  // "hpa-shm1"
constexpr size_t kBasePage = 4096;

// The last kControlBytes of every region, in the shared memory itself: every process that maps
// the region sees the same block.
struct Control {
  uint64_t magic;
  int32_t owner_pid;       // the process that created the region
  uint8_t kind;            // its PageKind
  std::atomic<uint8_t> retired;   // set by the owner before it unmaps the region for good
  std::atomic<int64_t> holders;   // messages in flight + receivers' live storages
};
static_assert(sizeof(Control) <= SharedMemory::kControlBytes, "the control block outgrew its room");
static_assert(std::atomic<int64_t>::is_always_lock_free && std::atomic<uint8_t>::is_always_lock_free,
              "the control block is shared between processes: its atomics must be lock-free");

}  // namespace

struct SharedRegion {
  void* base = nullptr;
  size_t size = 0;  // mapped bytes, the control block included
  int fd = -1;      // this process's descriptor of the file
  PageKind kind = PageKind::kBase;
  FileId id;
  bool owned = false;       // created here: reused here once idle and held by no one else
  uint64_t generation = 0;  // of the process that mapped it (SharedMemory::generation_)

  Control* control() const {
    return reinterpret_cast<Control*>(static_cast<char*>(base) + size - SharedMemory::kControlBytes);
  }
};

void* SharedMemory::data(const SharedRegion* r) { return r->base; }

size_t SharedMemory::region_size(size_t nbytes, PageKind kind) {
  const size_t unit = kind == PageKind::kBase ? kBasePage : page_kind_unit(kind);
  return (nbytes + kControlBytes + unit - 1) / unit * unit;
}

SharedRegion* SharedMemory::reuse(std::vector<SharedRegion*>& list, size_t j) {
  SharedRegion* r = list[j];
  list.erase(list.begin() + static_cast<ptrdiff_t>(j));
  stats_.idle_bytes -= static_cast<int64_t>(r->size);
  --stats_.idle_regions;
  ++stats_.num_reuses;
  stats_.in_use[static_cast<int>(r->kind)].add(static_cast<int64_t>(r->size));
  return r;
}

SharedRegion* SharedMemory::create(size_t nbytes, const Plan& plan, int node, int* error) {
  *error = 0;
  if (nbytes == 0 || nbytes > (size_t{1} << 62) || plan.count == 0) {
    *error = EINVAL;
    return nullptr;
  }
  SharedRegion* r = nullptr;
  {
    std::lock_guard<std::mutex> guard(mu_);
    for (int i = 0; i < plan.count && r == nullptr; ++i) {
      const size_t want = region_size(nbytes, plan.kinds[i]);
      for (size_t j = idle_owned_.size(); j-- > 0;) {  // the most recently used first: warm
        SharedRegion* c = idle_owned_[j];
        if (c->kind == plan.kinds[i] && c->size == want &&
            c->control()->holders.load(std::memory_order_acquire) == 0) {
          r = reuse(idle_owned_, j);
          break;
        }
      }
    }
  }
  if (r != nullptr) return r;
  int refused = 0;  // hugetlb kinds the kernel refused just now
  for (int i = 0; i < plan.count && r == nullptr; ++i) {
    const PageKind kind = plan.kinds[i];
    if (kind == PageKind::kThp && !shmem_thp()) continue;
    if (is_hugetlb(kind) && backing_off(kind)) continue;
    r = make(nbytes, kind, node, error);
    if (is_hugetlb(kind)) {
      if (r == nullptr) ++refused;
      note_outcome(kind, r != nullptr);
    }
  }
  std::lock_guard<std::mutex> guard(mu_);
  stats_.num_map_failures += refused;
  if (r == nullptr) {
    ++stats_.num_failures;
    return nullptr;
  }
  *error = 0;
  ++stats_.num_maps;
  if (r->kind != plan.kinds[0]) ++stats_.num_fallbacks;
  stats_.in_use[static_cast<int>(r->kind)].add(static_cast<int64_t>(r->size));
  return r;
}

// A dry hugetlb pool (or a cgroup limit, met only after faulting pages in up to it) would cost a
// failing attempt per batch: after a refusal the kind is skipped for 1, 2, 4, ... up to 64
// creations, until one succeeds or release_idle() ends the back-off.
bool SharedMemory::backing_off(PageKind kind) {
  std::atomic<uint32_t>& skip = skip_[kind == PageKind::kHugetlb1G];
  uint32_t left = skip.load(std::memory_order_relaxed);
  while (left > 0 && !skip.compare_exchange_weak(left, left - 1, std::memory_order_relaxed)) {
  }
  return left > 0;
}

void SharedMemory::note_outcome(PageKind kind, bool ok) {
  const int k = kind == PageKind::kHugetlb1G;
  if (ok) {
    span_[k].store(0, std::memory_order_relaxed);
    return;
  }
  const uint32_t next = std::min<uint32_t>(std::max<uint32_t>(1, 2 * span_[k].load(std::memory_order_relaxed)), 64);
  span_[k].store(next, std::memory_order_relaxed);
  skip_[k].store(next, std::memory_order_relaxed);
}

bool SharedMemory::shmem_thp() {
  int known = shmem_thp_.load(std::memory_order_relaxed);
  if (known < 0) {
    std::string text;
    known = 0;
    if (os_.read_file("/sys/kernel/mm/transparent_hugepage/shmem_enabled", &text) == 0)
      for (const char* mode : {"[always]", "[within_size]", "[advise]", "[force]"})
        if (text.find(mode) != std::string::npos) known = 1;
    shmem_thp_.store(known, std::memory_order_relaxed);
  }
  return known == 1;
}

SharedRegion* SharedMemory::make(size_t nbytes, PageKind kind, int node, int* error) {
  const size_t size = region_size(nbytes, kind);
  const FdResult f = os_.create_shared(kind, size);
  if (f.fd < 0) {
    *error = f.error;
    return nullptr;
  }
  const MapResult m = os_.map_shared(f.fd, size, kind);
  FileId id;
  size_t file_size = 0;
  int err = m.addr == nullptr ? m.error : os_.file_info(f.fd, &id, &file_size);
  if (err == 0) {
    if (node >= 0) (void)os_.set_policy(m.addr, size, MemPolicy::kPreferred, node_bit(node));
    // Faulted in now: a cgroup limit on hugetlb pages is an error here, not a SIGBUS at first
    // touch. Shared memory on ordinary pages does without on a kernel that lacks the call.
    err = os_.populate(m.addr, size);
    if (err == EINVAL && !is_hugetlb(kind)) err = 0;
  }
  if (err != 0) {
    if (m.addr != nullptr) (void)os_.unmap(m.addr, size);
    (void)os_.close_fd(f.fd);
    *error = err;
    return nullptr;
  }
  SharedRegion* r = adopt(m.addr, size, f.fd, id, /*owned=*/true, error);
  if (r == nullptr) return nullptr;
  r->kind = kind;
  Control* c = new (r->control()) Control;
  c->magic = kMagic;
  c->owner_pid = os_.process_id();
  c->kind = static_cast<uint8_t>(kind);
  c->retired.store(0, std::memory_order_relaxed);
  c->holders.store(0, std::memory_order_release);
  return r;
}

SharedRegion* SharedMemory::adopt(void* base, size_t size, int fd, FileId id, bool owned, int* error) {
  auto* r = new (std::nothrow) SharedRegion;
  if (r == nullptr) {
    (void)os_.unmap(base, size);
    (void)os_.close_fd(fd);
    *error = ENOMEM;
    return nullptr;
  }
  r->base = base;
  r->size = size;
  r->fd = fd;
  r->id = id;
  r->owned = owned;
  r->generation = generation_.load(std::memory_order_relaxed);
  return r;
}

SharedRegion* SharedMemory::receive(int fd, size_t size, int* error) {
  *error = 0;
  FileId id;
  size_t file_size = 0;
  if (int err = os_.file_info(fd, &id, &file_size); err != 0) {
    *error = err;
    return nullptr;
  }
  if (file_size != size || size < kControlBytes || size % kBasePage != 0) {
    *error = EINVAL;
    return nullptr;
  }
  const uint64_t generation = generation_.load(std::memory_order_relaxed);
  SharedRegion* r = nullptr;
  std::vector<SharedRegion*> dropped;
  {
    std::lock_guard<std::mutex> guard(mu_);
    for (size_t j = idle_received_.size(); j-- > 0;) {
      if (idle_received_[j]->id == id) {
        r = reuse(idle_received_, j);
        break;
      }
    }
    take_idle(&dropped, [this](const SharedRegion* c) { return owner_gone(c); });
  }
  destroy_all(dropped, /*retire=*/false);
  if (r != nullptr) return r;

  const FdResult own = os_.dup_fd(fd);
  if (own.fd < 0) {
    *error = own.error;
    return nullptr;
  }
  const MapResult m = os_.map_shared(own.fd, size, PageKind::kBase);
  if (m.addr == nullptr) {
    (void)os_.close_fd(own.fd);
    *error = m.error;
    return nullptr;
  }
  SharedRegion* region = adopt(m.addr, size, own.fd, id, /*owned=*/false, error);
  if (region == nullptr) return nullptr;
  region->generation = generation;
  const Control* c = region->control();
  if (c->magic != kMagic || c->kind >= kNumPageKinds) {  // not a region of this allocator
    destroy(region, /*retire=*/false);
    *error = EINVAL;
    return nullptr;
  }
  region->kind = static_cast<PageKind>(c->kind);
  std::lock_guard<std::mutex> guard(mu_);
  ++stats_.num_maps;
  stats_.in_use[static_cast<int>(region->kind)].add(static_cast<int64_t>(region->size));
  return region;
}

void SharedMemory::release(SharedRegion* r) {
  if (r->generation != generation_.load(std::memory_order_relaxed)) {
    destroy(r, /*retire=*/false);  // inherited at fork(): the parent's copy holds the count
    return;
  }
  if (!r->owned) r->control()->holders.fetch_sub(1, std::memory_order_acq_rel);
  std::vector<SharedRegion*> dropped;
  {
    std::lock_guard<std::mutex> guard(mu_);
    stats_.in_use[static_cast<int>(r->kind)].sub(static_cast<int64_t>(r->size));
    (r->owned ? idle_owned_ : idle_received_).push_back(r);
    stats_.idle_bytes += static_cast<int64_t>(r->size);
    ++stats_.idle_regions;
    take_idle(&dropped, [this](const SharedRegion* c) { return owner_gone(c); });
  }
  destroy_all(dropped, /*retire=*/true);
}

SharedHandle SharedMemory::share(SharedRegion* r) {
  r->control()->holders.fetch_add(1, std::memory_order_acq_rel);
  return {r->fd, r->size};
}

void SharedMemory::drop_message(SharedRegion* r) {
  r->control()->holders.fetch_sub(1, std::memory_order_acq_rel);
}

bool SharedMemory::owner_gone(const SharedRegion* r) {
  if (r->owned) return false;
  const Control* c = r->control();
  return c->retired.load(std::memory_order_acquire) != 0 || !os_.process_alive(c->owner_pid);
}

template <typename Drop>
void SharedMemory::take_idle(std::vector<SharedRegion*>* out, Drop drop) {
  const auto take = [&](std::vector<SharedRegion*>& list, size_t j) {
    SharedRegion* r = list[j];
    list.erase(list.begin() + static_cast<ptrdiff_t>(j));
    stats_.idle_bytes -= static_cast<int64_t>(r->size);
    --stats_.idle_regions;
    ++stats_.num_unmaps;
    out->push_back(r);
  };
  for (auto* list : {&idle_owned_, &idle_received_})
    for (size_t j = list->size(); j-- > 0;)
      if (drop((*list)[j])) take(*list, j);
  // Over the limit: the oldest go, received mappings first (they save faults; owned ones also
  // save a new file and its zeroing).
  const int64_t limit = static_cast<int64_t>(std::min<size_t>(max_idle_.load(std::memory_order_relaxed), INT64_MAX));
  while (stats_.idle_bytes > limit && !idle_received_.empty()) take(idle_received_, 0);
  while (stats_.idle_bytes > limit && !idle_owned_.empty()) take(idle_owned_, 0);
}

void SharedMemory::destroy(SharedRegion* r, bool retire) {
  if (retire && r->owned) r->control()->retired.store(1, std::memory_order_release);
  (void)os_.unmap(r->base, r->size);
  (void)os_.close_fd(r->fd);
  delete r;
}

size_t SharedMemory::destroy_all(std::vector<SharedRegion*>& regions, bool retire) {
  size_t bytes = 0;
  for (SharedRegion* r : regions) {
    bytes += r->size;
    destroy(r, retire);
  }
  regions.clear();
  return bytes;
}

size_t SharedMemory::reap() {
  std::vector<SharedRegion*> dropped;
  {
    std::lock_guard<std::mutex> guard(mu_);
    take_idle(&dropped, [this](const SharedRegion* c) { return owner_gone(c); });
  }
  return destroy_all(dropped, /*retire=*/true);
}

size_t SharedMemory::release_idle() {
  for (int k = 0; k < 2; ++k) {  // pages may have come back: ask the kernel again
    skip_[k].store(0, std::memory_order_relaxed);
    span_[k].store(0, std::memory_order_relaxed);
  }
  std::vector<SharedRegion*> dropped;
  {
    std::lock_guard<std::mutex> guard(mu_);
    take_idle(&dropped, [](const SharedRegion*) { return true; });
  }
  return destroy_all(dropped, /*retire=*/true);
}

SharedStats SharedMemory::stats() const {
  std::lock_guard<std::mutex> guard(mu_);
  return stats_;
}

void SharedMemory::forget_after_fork() {
  // The parent's idle regions: unmapped in this child only, and not retired (the parent still
  // owns them). Storages inherited in use are recognised by their generation when freed.
  for (auto* list : {&idle_owned_, &idle_received_}) {
    for (SharedRegion* r : *list) destroy(r, /*retire=*/false);
    list->clear();
  }
  stats_ = SharedStats{};
  generation_.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace hpa
