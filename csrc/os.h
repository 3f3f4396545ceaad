// The operating-system layer: the only code in this project that makes system calls
// (mmap, munmap, madvise, mbind, get_mempolicy, getcpu) or reads /sys and /proc.
//
// Everything above it (topology, page source, pool, allocator) receives an `Os&`, so tests can
// substitute a fake that runs a pool dry at a chosen moment or pretends to have four NUMA nodes.
// Results are `{value, error}` pairs: `error` is an errno value, 0 on success. No function here
// throws, allocates on the heap, or prints.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace hpa {

// What backs a mapping. The order is the fallback order: explicit huge pages first.
enum class PageKind : uint8_t {
  kHugetlb1G = 0,  // hugetlbfs pages of 1 GiB (MAP_HUGETLB | MAP_HUGE_1GB)
  kHugetlb2M = 1,  // hugetlbfs pages of 2 MiB (MAP_HUGETLB | MAP_HUGE_2MB)
  kThp = 2,        // anonymous memory, 2 MiB aligned, MADV_HUGEPAGE (transparent huge pages)
  kBase = 3,       // anonymous memory on ordinary pages
};
constexpr int kNumPageKinds = 4;

constexpr size_t kKiB = size_t{1} << 10;
constexpr size_t kMiB = size_t{1} << 20;
constexpr size_t kGiB = size_t{1} << 30;
constexpr size_t k2MiB = 2 * kMiB;

// Granularity of a mapping of this kind: every block of the kind is a multiple of it.
constexpr size_t page_kind_unit(PageKind k) { return k == PageKind::kHugetlb1G ? kGiB : k2MiB; }
constexpr bool is_hugetlb(PageKind k) { return k == PageKind::kHugetlb1G || k == PageKind::kHugetlb2M; }
const char* page_kind_name(PageKind k);  // "hugetlb_1G", "hugetlb_2M", "thp", "base"

// NUMA nodes as a bit set (bit i: node i); node ids are below 64 (kMaxNodes).
using NodeMask = uint64_t;
constexpr NodeMask node_bit(int node) { return NodeMask{1} << node; }

// Memory policies of Linux (set_mempolicy(2)), as far as this project tells them apart.
enum class MemPolicy : uint8_t {
  kDefault,     // none set: the local node (MPOL_DEFAULT, MPOL_LOCAL)
  kPreferred,   // one node first, any other after it (MPOL_PREFERRED, MPOL_PREFERRED_MANY)
  kBind,        // these nodes only (MPOL_BIND)
  kInterleave,  // pages spread round-robin (MPOL_INTERLEAVE, MPOL_WEIGHTED_INTERLEAVE)
};

struct [[nodiscard]] MapResult {
  void* addr;  // nullptr on failure
  int error;   // errno value, 0 on success
};

struct [[nodiscard]] FdResult {
  int fd;     // -1 on failure
  int error;  // errno value, 0 on success
};

// What identifies a file across processes: its device and inode (fstat).
struct FileId {
  uint64_t dev = 0;
  uint64_t ino = 0;
  bool operator==(const FileId& o) const { return dev == o.dev && ino == o.ino; }
};

class Os {
 public:
  virtual ~Os() = default;

  // Maps `size` bytes of private memory of kind `kind`, aligned to at least 2 MiB (1 GiB for
  // kHugetlb1G). REQUIRES: size is a multiple of page_kind_unit(kind).
  // Hugetlb mappings are never MAP_NORESERVE: an empty pool is ENOMEM here, not a SIGBUS later.
  // Nothing is faulted in; see populate().
  virtual MapResult map(PageKind kind, size_t size) = 0;

  // Maps one contiguous range, aligned to 1 GiB, whose first `head` bytes are 1 GiB hugetlb pages
  // and whose next `tail` bytes are 2 MiB hugetlb pages, so that a tensor of 1 GiB and more wastes
  // less than 2 MiB. REQUIRES: head a non-zero multiple of 1 GiB, tail a multiple of 2 MiB.
  // Nothing is faulted in. On failure nothing stays mapped.
  virtual MapResult map_composite(size_t head, size_t tail) = 0;

  // Unmaps a range returned by map() or map_composite(), whole, or the tail of one from a 2 MiB
  // boundary. Returns an errno value, 0 on success.
  virtual int unmap(void* addr, size_t size) = 0;

  // Faults every page of the range in for writing (MADV_POPULATE_WRITE, Linux 5.14+). On a hugetlb
  // mapping this is where a cgroup limit charged at fault time shows up, as an error (EFAULT,
  // ENOMEM) instead of the SIGBUS a plain first touch would raise. EINVAL: kernel too old.
  virtual int populate(void* addr, size_t size) = 0;

  // Sets the NUMA policy of the range's future pages (mbind): kBind takes pages from `nodes` only
  // (bit i: node i), kPreferred from the lowest node of `nodes` first and any other after it,
  // kInterleave round-robin over `nodes`. Must be called before populate(). Returns an errno
  // value, 0 on success.
  virtual int set_policy(void* addr, size_t size, MemPolicy policy, NodeMask nodes) = 0;

  // The calling thread's memory policy (get_mempolicy), which a thread inherits from the one that
  // created it and a process from `numactl`: kDefault when none was set. Returns an errno value.
  virtual int thread_policy(MemPolicy* policy, NodeMask* nodes) = 0;

  // Maps `size` bytes of private anonymous memory (2 MiB aligned, MADV_HUGEPAGE) holding a copy of
  // the `size` bytes at `src`. For Note [Fork copies] (fork.h).
  virtual MapResult map_copy(const void* src, size_t size) = 0;

  // Moves the mapping at `from` to `to` (mremap MREMAP_FIXED), replacing whatever was mapped
  // there, hugetlb pages included. REQUIRES: both ranges 2 MiB aligned (1 GiB where `to` is on
  // 1 GiB pages). Returns an errno value, 0 on success.
  virtual int move_mapping(void* from, void* to, size_t size) = 0;

  // Free huge pages of `kind` (kHugetlb2M or kHugetlb1G) that a new mapping may take: on `node`,
  // or over the whole system when `node` is -1 (there, less the pages promised to reservations;
  // the kernel keeps no per-node count of those). 0 when the kernel does not say.
  virtual int64_t hugetlb_free(PageKind kind, int node) = 0;

  // Whether any mapping of this process holds `addr` (mincore). For the deleter's diagnosis of a
  // pointer that is not ours (Note [Foreign pointers], allocator.h): not on any fast path.
  virtual bool is_mapped(const void* addr) = 0;

  // The CPU the calling thread runs on, or -1 when unknown. Cheap: served by rseq / vDSO.
  virtual int current_cpu() = 0;

  // Reads a whole small text file (sysfs, procfs) into `out`. Returns an errno value, 0 on success.
  virtual int read_file(const char* path, std::string* out) = 0;

  // --- Shared memory: files passed between processes as descriptors (shared_memory.h).

  // Creates an anonymous memory file (memfd_create, close-on-exec) of `size` bytes: of hugetlb
  // pages for kHugetlb2M / kHugetlb1G (REQUIRES: size a multiple of page_kind_unit(kind)),
  // otherwise of ordinary shared memory (shmem). Nothing is allocated yet.
  virtual FdResult create_shared(PageKind kind, size_t size) = 0;

  // Maps all `size` bytes of the file `fd` shared and writable; MADV_HUGEPAGE too for kThp. A
  // hugetlb file's pages that no one holds yet are reserved here (ENOMEM when the pool cannot),
  // never at first touch: no MAP_NORESERVE. Nothing is faulted in; see populate().
  virtual MapResult map_shared(int fd, size_t size, PageKind kind) = 0;

  // A close-on-exec duplicate of `fd`, or closes it. Return an errno value on failure (dup: in
  // FdResult).
  virtual FdResult dup_fd(int fd) = 0;
  virtual int close_fd(int fd) = 0;

  // The file behind `fd`: its identity and size in bytes. Returns an errno value, 0 on success.
  virtual int file_info(int fd, FileId* id, size_t* size) = 0;

  // This process's id, and whether process `pid` still exists (kill(pid, 0)).
  virtual int process_id() = 0;
  virtual bool process_alive(int pid) = 0;

  // --- Weights (hugepage_allocator/_weights.py).

  // Drops the page-table entries of the whole pages inside [addr, addr + size) of a file mapping
  // (MADV_DONTNEED): the process stops holding them; the file's pages stay in the page cache, and
  // a later read maps them again (with the file's bytes: written copy-on-write pages are lost).
  // Returns an errno value, 0 on success (also when the range holds no whole page).
  virtual int discard(void* addr, size_t size) = 0;
};

// The real Linux implementation. Stateless; one instance lives for the whole process.
Os& real_os();

}  // namespace hpa
