// Linux implementation of the OS layer (see os.h). Raw system calls, no policy.
#include "os.h"

#include <fcntl.h>
#include <linux/mempolicy.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif
#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << MAP_HUGE_SHIFT)
#endif
#ifndef MAP_HUGE_1GB
#define MAP_HUGE_1GB (30 << MAP_HUGE_SHIFT)
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif
#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21U << 26)
#endif
#ifndef MFD_HUGE_1GB
#define MFD_HUGE_1GB (30U << 26)
#endif

namespace hpa {

const char* page_kind_name(PageKind k) {
  switch (k) {
    case PageKind::kHugetlb1G: return "hugetlb_1G";
    case PageKind::kHugetlb2M: return "hugetlb_2M";
    case PageKind::kThp: return "thp";
    case PageKind::kBase: return "base";
  }
  return "unknown";
}

namespace {

// Node masks passed to the kernel: room for 1024 nodes, of which this project uses the first 64.
constexpr unsigned long kMaskBits = 1024;
constexpr size_t kMaskWords = kMaskBits / (8 * sizeof(unsigned long));
// Flags the kernel ORs into the mode get_mempolicy() reports, and modes newer than some headers.
constexpr int kModeFlags = MPOL_F_STATIC_NODES | MPOL_F_RELATIVE_NODES | (1 << 13);  // and NUMA_BALANCING
constexpr int kMpolPreferredMany = 5;
constexpr int kMpolWeightedInterleave = 6;

// Anonymous memory aligned to `align`: map a little more, then trim both ends.
MapResult map_aligned_anonymous(size_t size, size_t align) {
  if (size > SIZE_MAX - align) return {nullptr, ENOMEM};
  const size_t padded = size + align;
  void* raw = mmap(nullptr, padded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return {nullptr, errno};
  const uintptr_t begin = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (begin + align - 1) & ~(uintptr_t{align} - 1);
  if (aligned > begin) munmap(raw, aligned - begin);
  const uintptr_t end = begin + padded;
  if (end > aligned + size) munmap(reinterpret_cast<void*>(aligned + size), end - (aligned + size));
  return {reinterpret_cast<void*>(aligned), 0};
}

class LinuxOs final : public Os {
 public:
  MapResult map(PageKind kind, size_t size) override {
    if (size == 0 || size % page_kind_unit(kind) != 0) return {nullptr, EINVAL};
    switch (kind) {
      case PageKind::kHugetlb1G:
      case PageKind::kHugetlb2M: {
        // The kernel aligns hugetlb mappings to their page size. No MAP_NORESERVE, ever.
        const int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB |
                          (kind == PageKind::kHugetlb1G ? MAP_HUGE_1GB : MAP_HUGE_2MB);
        void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, flags, -1, 0);
        if (p == MAP_FAILED) return {nullptr, errno};
        return {p, 0};
      }
      case PageKind::kThp: {
        MapResult r = map_aligned_anonymous(size, k2MiB);
        if (r.addr != nullptr && madvise(r.addr, size, MADV_HUGEPAGE) != 0) {
          const int err = errno;
          munmap(r.addr, size);
          return {nullptr, err};
        }
        return r;
      }
      case PageKind::kBase:
        // Aligned too, so that no two blocks ever share a 2 MiB chunk start (see page_map.h).
        return map_aligned_anonymous(size, k2MiB);
    }
    return {nullptr, EINVAL};
  }

  MapResult map_composite(size_t head, size_t tail) override {
    if (head == 0 || head % kGiB != 0 || tail % k2MiB != 0 || head > SIZE_MAX - tail - kGiB)
      return {nullptr, EINVAL};
    // Take the address range first (PROT_NONE: no memory, nothing to commit), then lay both
    // hugetlb parts over it with MAP_FIXED; neither part is MAP_NORESERVE.
    const size_t size = head + tail;
    const size_t padded = size + kGiB;
    void* raw = mmap(nullptr, padded, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return {nullptr, errno};
    const uintptr_t begin = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t aligned = (begin + kGiB - 1) & ~(uintptr_t{kGiB} - 1);
    if (aligned > begin) munmap(raw, aligned - begin);
    if (begin + padded > aligned + size)
      munmap(reinterpret_cast<void*>(aligned + size), begin + padded - (aligned + size));
    char* base = reinterpret_cast<char*>(aligned);
    const int fixed = MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_FIXED;
    if (mmap(base, head, PROT_READ | PROT_WRITE, fixed | MAP_HUGE_1GB, -1, 0) == MAP_FAILED ||
        (tail > 0 &&
         mmap(base + head, tail, PROT_READ | PROT_WRITE, fixed | MAP_HUGE_2MB, -1, 0) == MAP_FAILED)) {
      const int err = errno;
      munmap(base, size);
      return {nullptr, err};
    }
    return {base, 0};
  }

  int unmap(void* addr, size_t size) override { return munmap(addr, size) == 0 ? 0 : errno; }

  MapResult map_copy(const void* src, size_t size) override {
    MapResult r = map_aligned_anonymous(size, k2MiB);
    if (r.addr == nullptr) return r;
    (void)madvise(r.addr, size, MADV_HUGEPAGE);  // best effort: ordinary pages do as well
    std::memcpy(r.addr, src, size);
    return r;
  }

  int move_mapping(void* from, void* to, size_t size) override {
    return mremap(from, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, to) == MAP_FAILED ? errno : 0;
  }

  int populate(void* addr, size_t size) override {
    // Retry on EINTR / EAGAIN: the kernel may give up part way under contention.
    for (int attempt = 0; attempt < 8; ++attempt) {
      if (madvise(addr, size, MADV_POPULATE_WRITE) == 0) return 0;
      if (errno != EINTR && errno != EAGAIN) return errno;
    }
    return EAGAIN;
  }

  int set_policy(void* addr, size_t size, MemPolicy policy, NodeMask nodes) override {
    if (nodes == 0) return EINVAL;
    int mode = MPOL_BIND;
    switch (policy) {
      case MemPolicy::kDefault: return EINVAL;
      case MemPolicy::kPreferred:
        mode = MPOL_PREFERRED;
        nodes &= ~(nodes - 1);  // one node: the lowest
        break;
      case MemPolicy::kBind: mode = MPOL_BIND; break;
      case MemPolicy::kInterleave: mode = MPOL_INTERLEAVE; break;
    }
    unsigned long mask[kMaskWords] = {};
    mask[0] = static_cast<unsigned long>(nodes);
    const long rc = syscall(SYS_mbind, addr, size, mode, mask, kMaskBits, 0UL);
    return rc == 0 ? 0 : errno;
  }

  int thread_policy(MemPolicy* policy, NodeMask* nodes) override {
    int mode = 0;
    unsigned long mask[kMaskWords] = {};
    if (syscall(SYS_get_mempolicy, &mode, mask, kMaskBits, nullptr, 0UL) != 0) return errno;
    *nodes = static_cast<NodeMask>(mask[0]);
    switch (mode & ~kModeFlags) {
      case MPOL_PREFERRED:
      case kMpolPreferredMany:
        *policy = *nodes != 0 ? MemPolicy::kPreferred : MemPolicy::kDefault;  // empty: local
        break;
      case MPOL_BIND: *policy = MemPolicy::kBind; break;
      case MPOL_INTERLEAVE:
      case kMpolWeightedInterleave: *policy = MemPolicy::kInterleave; break;
      default: *policy = MemPolicy::kDefault; *nodes = 0; break;
    }
    return 0;
  }

  int64_t hugetlb_free(PageKind kind, int node) override {
    const char* dir = kind == PageKind::kHugetlb1G ? "hugepages-1048576kB" : "hugepages-2048kB";
    std::string text;
    if (node >= 0) {
      const std::string path = "/sys/devices/system/node/node" + std::to_string(node) + "/hugepages/" + dir +
                               "/free_hugepages";
      return read_file(path.c_str(), &text) == 0 ? std::strtoll(text.c_str(), nullptr, 10) : 0;
    }
    const std::string base = std::string("/sys/kernel/mm/hugepages/") + dir + "/";
    if (read_file((base + "free_hugepages").c_str(), &text) != 0) return 0;
    const unsigned long long free = std::strtoull(text.c_str(), nullptr, 10);
    if (read_file((base + "resv_hugepages").c_str(), &text) != 0) return 0;
    const unsigned long long resv = std::strtoull(text.c_str(), nullptr, 10);
    // Reserved pages are free pages, so resv_hugepages never exceeds free_hugepages; a larger
    // value is the kernel's counter gone below zero (seen on Linux 6.18 as
    // 18446744073709551605) and is read as no reservation.
    return static_cast<int64_t>(resv <= free ? free - resv : free);
  }

  bool is_mapped(const void* addr) override {
    const uintptr_t page = reinterpret_cast<uintptr_t>(addr) & ~uintptr_t{4095};
    unsigned char resident;
    return mincore(reinterpret_cast<void*>(page), 1, &resident) == 0 || errno != ENOMEM;
  }

  int current_cpu() override { return sched_getcpu(); }

  int read_file(const char* path, std::string* out) override {
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    out->clear();
    char buf[4096];
    for (;;) {
      const ssize_t n = read(fd, buf, sizeof(buf));
      if (n < 0) {
        if (errno == EINTR) continue;
        const int err = errno;
        close(fd);
        return err;
      }
      if (n == 0) break;
      out->append(buf, static_cast<size_t>(n));
    }
    close(fd);
    return 0;
  }

  FdResult create_shared(PageKind kind, size_t size) override {
    unsigned flags = MFD_CLOEXEC;
    if (is_hugetlb(kind)) {
      if (size == 0 || size % page_kind_unit(kind) != 0) return {-1, EINVAL};
      flags |= MFD_HUGETLB | (kind == PageKind::kHugetlb1G ? MFD_HUGE_1GB : MFD_HUGE_2MB);
    }
    const int fd = static_cast<int>(syscall(SYS_memfd_create, "hugepage-allocator", flags));
    if (fd < 0) return {-1, errno};
    if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
      const int err = errno;
      close(fd);
      return {-1, err};
    }
    return {fd, 0};
  }

  MapResult map_shared(int fd, size_t size, PageKind kind) override {
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return {nullptr, errno};
    if (kind == PageKind::kThp) (void)madvise(p, size, MADV_HUGEPAGE);  // as shmem_enabled allows
    return {p, 0};
  }

  FdResult dup_fd(int fd) override {
    const int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    return copy < 0 ? FdResult{-1, errno} : FdResult{copy, 0};
  }

  int close_fd(int fd) override { return close(fd) == 0 ? 0 : errno; }

  int file_info(int fd, FileId* id, size_t* size) override {
    struct stat st;
    if (fstat(fd, &st) != 0) return errno;
    id->dev = static_cast<uint64_t>(st.st_dev);
    id->ino = static_cast<uint64_t>(st.st_ino);
    *size = static_cast<size_t>(st.st_size);
    return 0;
  }

  int process_id() override { return static_cast<int>(getpid()); }

  bool process_alive(int pid) override { return kill(pid, 0) == 0 || errno == EPERM; }

  int discard(void* addr, size_t size) override {
    const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    const uintptr_t lo = (reinterpret_cast<uintptr_t>(addr) + page - 1) & ~(page - 1);
    const uintptr_t hi = (reinterpret_cast<uintptr_t>(addr) + size) & ~(page - 1);
    if (hi <= lo) return 0;
    return madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED) == 0 ? 0 : errno;
  }
};

}  // namespace

Os& real_os() {
  static LinuxOs* os = new LinuxOs();  // never destroyed: frees may run during exit
  return *os;
}

}  // namespace hpa
