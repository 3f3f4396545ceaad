// The pool of blocks: whole mappings handed out to tensors and cached when freed, kept per NUMA
// node and page kind, so that a freed block is handed out again with no system call and no page
// fault.
//
// A request is served by the first kind of its plan that can serve it (explicit huge pages
// first). For each kind in turn: the node's free list (best fit by size, most recently freed
// first, so the memory is still warm), then a fresh mapping from the page source unless that kind
// is backing off after a refusal. When the kernel refuses a hugetlb mapping, the node's idle
// blocks of that kind are given back first (the kernel's pool may be full of our own cached
// pages) and the mapping is tried once more. When nothing is left, every idle block everywhere
// is given back and the whole plan tried once more before the request fails.
//
// Locking: one mutex per node guards its free lists, stats and back-off; the metadata mutex
// guards block records and the page map's writers. Never both at once, except in lock_all()
// (fork), which takes the metadata mutex first. No lock is held across a system call.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "os.h"
#include "page_map.h"
#include "page_source.h"
#include "stats.h"
#include "topology.h"

namespace hpa {

struct Block {
  std::atomic<uintptr_t> start{0};  // read lock-free by lookup() for foreign pointers
  size_t size = 0;                  // bytes mapped: a multiple of page_kind_unit(kind)
  size_t requested = 0;             // bytes asked for by the current owner; 0 while cached
  Block* prev = nullptr;            // free-list links (also the metadata free list)
  Block* next = nullptr;
  PageKind kind = PageKind::kBase;
  int16_t node = 0;
  bool in_use = false;
};

// Kinds to try for one request, in order.
struct Plan {
  std::array<PageKind, kNumPageKinds> kinds{};
  int count = 0;
  void add(PageKind k) { kinds[count++] = k; }
};

// Free blocks of one page kind on one node, bucketed by size in units of the kind's page size:
// buckets 1..kExactBuckets hold blocks of exactly that many units, the last bucket holds the
// larger ones. A bitmap of non-empty buckets makes the best-fit search a few word scans.
class FreeLists {
 public:
  static constexpr size_t kExactBuckets = 512;

  explicit FreeLists(size_t unit = k2MiB) : unit_(unit) {}
  void push(Block* b);                               // LIFO: most recently freed first
  Block* take(size_t min_units, size_t max_units);   // smallest fitting size, or nullptr
  void remove(Block* b);
  Block* pop_any();
  bool empty() const;

 private:
  size_t bucket_of(size_t units) const { return units > kExactBuckets ? kExactBuckets + 1 : units; }
  static constexpr size_t kBuckets = kExactBuckets + 2;  // index 0 unused
  static constexpr size_t kWords = (kBuckets + 63) / 64;
  size_t unit_;
  Block* heads_[kBuckets] = {};
  uint64_t nonempty_[kWords] = {};
};

// After the kernel refuses a fresh mapping of some size, requests of that size or more skip the
// attempt for the next `window` tries; the window doubles on each refusal in a row (up to
// kMaxSkip) and closes on a success or when memory is given back. Keyed by size so that one
// absurd request does not push ordinary ones off huge pages.
class Backoff {
 public:
  static constexpr uint32_t kMaxSkip = 256;
  bool skip(size_t size) {
    if (remaining_ == 0 || size < refused_size_) return false;
    --remaining_;
    return true;
  }
  void refused(size_t size) {
    refused_size_ = remaining_ == 0 ? size : std::min(refused_size_, size);
    window_ = window_ == 0 ? 1 : std::min<uint32_t>(window_ * 2, kMaxSkip);
    remaining_ = window_;
  }
  void reset() { window_ = remaining_ = 0; }

 private:
  uint32_t window_ = 0;
  uint32_t remaining_ = 0;
  size_t refused_size_ = 0;
};

// Totals over the whole pool, kept with atomics so no lock is shared across nodes.
struct GlobalStats {
  AtomicPeakStat allocated_bytes;
  AtomicPeakStat requested_bytes;
  AtomicPeakStat reserved_bytes;
};

class BlockPool {
 public:
  BlockPool(Os& os, const Topology& topology);

  // A block of at least `nbytes` for `node`, or nullptr when no kind of the plan can serve it.
  // REQUIRES: topology().has_node(node), plan.count > 0.
  Block* allocate(size_t nbytes, int node, const Plan& plan);
  // Returns a block to its home node's free list. REQUIRES: b came from allocate() and is in use.
  void free(Block* b);
  // The in-use or cached block starting exactly at `p`, or nullptr (a foreign pointer). Lock-free.
  Block* lookup(const void* p) const {
    Block* b = page_map_.get(reinterpret_cast<uintptr_t>(p));
    if (b == nullptr || b->start.load(std::memory_order_relaxed) != reinterpret_cast<uintptr_t>(p))
      return nullptr;
    return b;
  }

  // Gives every idle block back to the kernel. Returns the bytes unmapped.
  size_t release_all();

  // Stats of one (node, kind), and of one node over all kinds. REQUIRES: has_node(node).
  PoolStats stats(int node, PageKind kind) const;
  PoolStats node_stats(int node) const;
  const GlobalStats& global_stats() const { return global_; }
  void reset_peaks();

  const Topology& topology() const { return topology_; }
  const PageSource& source() const { return source_; }

  // Fork safety: take every lock before fork(), release them in both processes after it.
  void lock_all();
  void unlock_all();

 private:
  struct NodePool {
    mutable std::mutex mu;
    FreeLists free[kNumPageKinds] = {FreeLists(kGiB), FreeLists(k2MiB), FreeLists(k2MiB), FreeLists(k2MiB)};
    PoolStats stats[kNumPageKinds];
    PoolStats total;  // the node over all kinds (its peaks are true peaks, not sums)
    Backoff backoff[kNumPageKinds];
  };

  Block* try_kind(NodePool& np, size_t nbytes, int node, PageKind kind, bool fallback, bool force);
  void hand_out(NodePool& np, Block* b, size_t nbytes, bool from_cache, bool fallback);
  // Unmaps the idle blocks of `kind` on `node`. Returns the bytes unmapped.
  size_t release(int node, PageKind kind);
  void destroy(Block* b);  // unmap and recycle the record; REQUIRES: b is off every list
  Block* new_record();

  const Topology& topology_;
  PageSource source_;
  std::unique_ptr<NodePool> nodes_[kMaxNodes];
  GlobalStats global_;

  std::mutex meta_mu_;
  Block* spare_records_ = nullptr;  // guarded by meta_mu_
  PageMap<Block> page_map_;         // writers hold meta_mu_
};

}  // namespace hpa
