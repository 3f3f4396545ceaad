// Unit tests of the native core (pool, span heaps, small arena, page source) over the fake OS
// layer, with no torch and no Python, so that they can be built with AddressSanitizer +
// UndefinedBehaviorSanitizer (LeakSanitizer included) and with ThreadSanitizer: `./run sanitize`.
//
// Each test is a function; a failed CHECK prints where and exits non-zero. Built with
// HPA_LOCK_CHECKS (Note [Lock checks], sync.h): a system call of the fake OS or an allocation from
// the C++ heap while a pool lock is held fails the run.
#include <time.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <new>
#include <thread>
#include <vector>

#include "fake_os.h"
#include "fork.h"
#include "pool.h"
#include "small_arena.h"
#include "sync.h"
#include "thread_cache.h"
#include "topology.h"

// Every allocation of the program checks that its thread holds no pool lock.
void* operator new(size_t n) {
  if (!hpa::no_lock_held()) {
    std::fprintf(stderr, "operator new(%zu) called with a pool lock held\n", n);
    std::abort();
  }
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new(size_t n, const std::nothrow_t&) noexcept {
  if (!hpa::no_lock_held()) {
    std::fprintf(stderr, "operator new(%zu) called with a pool lock held\n", n);
    std::abort();
  }
  return std::malloc(n ? n : 1);
}
void* operator new[](size_t n) { return operator new(n); }
void* operator new[](size_t n, const std::nothrow_t& t) noexcept { return operator new(n, t); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }

namespace hpa {
namespace {

#define CHECK(cond)                                                               \
  do {                                                                            \
    if (!(cond)) {                                                                \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      std::exit(1);                                                               \
    }                                                                             \
  } while (0)

// A pool over its own fake OS, as _C.testing.FakePool builds it.
struct TestPool {
  FakeOs os;
  Topology topology;
  std::unique_ptr<Pool> pool;

  TestPool(int nodes, int64_t pages_2m, int64_t pages_1g, bool thp = true)
      : os(nodes, 1, pages_2m, pages_1g, thp), topology(os) {
    const int slot = ThreadCaches::claim_slot();
    CHECK(slot > 0);
    pool = std::make_unique<Pool>(os, topology, slot);
  }

  static Plan plan(size_t nbytes, KindMask kinds = kAllKinds) {
    Plan p;
    if ((kinds & kind_bit(PageKind::kHugetlb1G)) && nbytes >= kGiB) p.add(PageKind::kHugetlb1G);
    for (PageKind k : {PageKind::kHugetlb2M, PageKind::kThp, PageKind::kBase})
      if (kinds & kind_bit(k)) p.add(k);
    return p;
  }
  Block alloc(size_t n, int node = 0, KindMask kinds = kAllKinds) {
    pool->set_small_kinds(kinds);
    return pool->allocate(n, route(Placement{}, topology, node, n > kSmallMax), plan(n, kinds));
  }
  int64_t allocated() const { return pool->allocated_bytes().bytes.current; }
  int64_t reserved() const { return pool->reserved_bytes().current.load(); }
  int64_t allocs_of(PageKind kind) const {
    int64_t n = 0;
    for (int node : topology.nodes()) n += pool->heap_stats(node, kind).num_allocs;
    return n;
  }
  // Everything freed and released: nothing stays mapped, and no unmap was ever wrong.
  void check_empty() {
    CHECK(allocated() == 0);
    pool->release();
    CHECK(reserved() == 0);
    CHECK(os.live_mappings() == 0);
    CHECK(os.mapped_bytes() == 0);
    CHECK(os.bad_unmaps() == 0);
    CHECK(os.calls_under_lock() == 0);
  }
};

// CPU time of the calling thread, in nanoseconds.
int64_t thread_cpu_ns() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

// Fills a block with a pattern derived from `seed`; checks it. Small blocks whole, large ones at
// every 4 KiB and at both ends (the fake's memory is the C++ heap: untouched pages stay free).
void fill(const Block& b, size_t n, uint8_t seed) {
  auto* p = static_cast<uint8_t*>(b.ptr);
  if (n <= 64 * kKiB) {
    std::memset(p, seed, n);
    return;
  }
  for (size_t off = 0; off < n; off += 4096) p[off] = seed;
  p[n - 1] = seed;
}
bool intact(const Block& b, size_t n, uint8_t seed) {
  const auto* p = static_cast<const uint8_t*>(b.ptr);
  if (n <= 64 * kKiB) {
    for (size_t i = 0; i < n; ++i)
      if (p[i] != seed) return false;
    return true;
  }
  for (size_t off = 0; off < n; off += 4096)
    if (p[off] != seed) return false;
  return p[n - 1] == seed;
}

void test_every_size_class_allocates_aligned_distinct_blocks_and_frees_them() {
  TestPool t(1, 512, 0);
  for (int c = 1; c < kNumClasses; ++c) {
    const size_t size = SizeClasses::size(c);
    std::vector<Block> blocks;
    for (int i = 0; i < 40; ++i) {
      const size_t n = i % 2 ? size : (c > 1 ? SizeClasses::size(c - 1) + 1 : 1);  // its top and bottom
      Block b = t.alloc(n);
      CHECK(b.ptr != nullptr && b.size == size);
      CHECK(reinterpret_cast<uintptr_t>(b.ptr) % 64 == 0);
      CHECK(t.pool->block_size(b.ptr) == size);
      fill(b, b.size, static_cast<uint8_t>(c + i));
      blocks.push_back(b);
    }
    for (size_t i = 0; i < blocks.size(); ++i) {
      CHECK(intact(blocks[i], blocks[i].size, static_cast<uint8_t>(c + i)));
      CHECK(t.pool->free(blocks[i].ptr) == size);
    }
  }
  CHECK(t.allocs_of(PageKind::kThp) == 0 && t.allocs_of(PageKind::kBase) == 0);
  t.check_empty();
}

void test_large_blocks_of_every_shape_are_exact_and_coalesce_back() {
  TestPool t(1, 2048, 2);
  const size_t sizes[] = {kSmallMax + 1, 300 * kKiB, 2 * kMiB, 5 * kMiB + 1, 31 * kMiB, 40 * kMiB,
                          kGiB, kGiB + 6 * kMiB};
  std::vector<std::pair<Block, size_t>> live;
  for (size_t n : sizes) {
    Block b = t.alloc(n);
    CHECK(b.ptr != nullptr && b.size >= n && b.size - n < kUnit);
    CHECK(t.pool->block_size(b.ptr) == b.size);
    CHECK(t.pool->block_size(static_cast<char*>(b.ptr) + kUnit) == 0);  // not a block start
    fill(b, n, static_cast<uint8_t>(n));
    live.push_back({b, n});
  }
  CHECK(t.allocs_of(PageKind::kHugetlb1G) == 2);
  for (auto& [b, n] : live) {
    CHECK(intact(b, n, static_cast<uint8_t>(n)));
    CHECK(t.pool->free(b.ptr) == b.size);
  }
  int foreign = 0;
  CHECK(t.pool->free(&foreign) == 0);  // not ours: refused, nothing touched
  t.check_empty();
}

void test_a_dry_pool_falls_back_and_pages_that_come_back_are_used_again() {
  TestPool t(1, 16, 0);
  std::vector<Block> live;
  for (int i = 0; i < 10; ++i) live.push_back(t.alloc(8 * kMiB));  // 16 pages: one segment of four
  CHECK(t.allocs_of(PageKind::kHugetlb2M) == 4);
  CHECK(t.allocs_of(PageKind::kThp) == 6);
  for (int i = 0; i < 300; ++i) {  // the dry pool is not asked every time (back-off)
    Block b = t.alloc(8 * kMiB);
    CHECK(b.ptr != nullptr);
    t.pool->free(b.ptr);
  }
  CHECK(t.pool->heap_stats(0, PageKind::kHugetlb2M).num_map_failures < 300);
  for (Block& b : live) t.pool->free(b.ptr);
  live.clear();
  t.pool->release();             // gives the pages back, resets the back-off
  t.os.set_free_pages(PageKind::kHugetlb2M, 64);
  const int64_t before = t.allocs_of(PageKind::kHugetlb2M);
  Block b = t.alloc(8 * kMiB);
  CHECK(t.allocs_of(PageKind::kHugetlb2M) == before + 1);
  t.pool->free(b.ptr);
  t.check_empty();
}

void test_a_failing_populate_is_a_fallback_not_a_crash() {
  TestPool t(1, 512, 0);
  t.os.fail_populate(3, EFAULT);  // a cgroup limit charged at fault time
  Block b = t.alloc(8 * kMiB);
  CHECK(b.ptr != nullptr);
  CHECK(t.allocs_of(PageKind::kThp) == 1);
  t.pool->free(b.ptr);
  t.check_empty();
}

void test_no_page_kind_left_is_a_null_block() {
  TestPool t(1, 0, 0, /*thp=*/false);
  Block b = t.alloc(8 * kMiB, 0, kind_bit(PageKind::kHugetlb2M));
  CHECK(b.ptr == nullptr);
  b = t.alloc(100, 0, kind_bit(PageKind::kHugetlb2M));
  CHECK(b.ptr == nullptr);
  b = t.alloc(size_t{1} << 60);
  CHECK(b.ptr == nullptr);
  b = t.alloc(SIZE_MAX - kMiB);
  CHECK(b.ptr == nullptr);
  t.check_empty();
}

void test_kind_at_names_the_pages_under_an_address() {
  TestPool t(1, 512, 1);
  Block big = t.alloc(kGiB + 8 * kMiB);  // one 1 GiB page, then 2 MiB pages (a composite segment)
  CHECK(big.ptr != nullptr);
  const char* p = static_cast<const char*>(big.ptr);
  CHECK(t.pool->kind_at(p) == static_cast<int>(PageKind::kHugetlb1G));
  CHECK(t.pool->kind_at(p + kGiB - 1) == static_cast<int>(PageKind::kHugetlb1G));
  CHECK(t.pool->kind_at(p + kGiB + 4 * kMiB) == static_cast<int>(PageKind::kHugetlb2M));
  Block mid = t.alloc(8 * kMiB, 0, kind_bit(PageKind::kHugetlb2M));
  CHECK(t.pool->kind_at(mid.ptr) == static_cast<int>(PageKind::kHugetlb2M));
  Block small = t.alloc(100, 0, kind_bit(PageKind::kThp));
  CHECK(t.pool->kind_at(small.ptr) == static_cast<int>(PageKind::kThp));
  int local = 0;
  CHECK(t.pool->kind_at(&local) == -1);  // not the pool's memory
  for (Block* b : {&big, &mid, &small}) t.pool->free(b->ptr);
  t.pool->release();
  CHECK(t.pool->kind_at(p) == -1);  // given back: no longer mapped by the pool
  t.check_empty();
}

void test_max_cached_zero_gives_whole_segments_back_on_free() {
  TestPool t(1, 512, 0);
  t.pool->set_max_cached(0);
  Block b = t.alloc(40 * kMiB);
  t.pool->free(b.ptr);
  CHECK(t.reserved() == 0);
  t.check_empty();
}

void test_blocks_on_four_nodes_go_back_to_their_own_heaps() {
  TestPool t(4, 512, 0);
  std::vector<Block> live;
  for (int node = 0; node < 4; ++node) {
    live.push_back(t.alloc(3 * kMiB, node));
    live.push_back(t.alloc(1000, node));
  }
  for (int node = 0; node < 4; ++node) CHECK(t.pool->heap_stats(node, PageKind::kHugetlb2M).num_allocs >= 1);
  for (Block& b : live) CHECK(t.pool->free(b.ptr) > 0);
  t.check_empty();
}

// What the atfork handlers do in a child: every lock taken and released, inherited memory forgotten.
void test_after_fork_the_child_never_reuses_inherited_memory_and_unmaps_it_when_freed() {
  TestPool t(1, 512, 0);
  std::vector<Block> inherited;
  for (int i = 0; i < 50; ++i) inherited.push_back(t.alloc(i % 2 ? 3000 : 3 * kMiB));
  Block cached = t.alloc(6 * kMiB);
  t.pool->free(cached.ptr);  // idle at fork
  ForkHandler fork(t.os, *t.pool);
  fork.before();
  fork.in_child();
  std::vector<Block> fresh;
  for (int i = 0; i < 50; ++i) {
    Block b = t.alloc(i % 2 ? 3000 : 3 * kMiB);
    for (const Block& old : inherited) CHECK(b.ptr != old.ptr);
    CHECK(b.ptr != cached.ptr);
    fresh.push_back(b);
  }
  for (Block& b : inherited) CHECK(t.pool->free(b.ptr) > 0);
  for (Block& b : fresh) CHECK(t.pool->free(b.ptr) > 0);
  t.check_empty();
}

// Note [Fork copies]: with no free huge page left, every live huge page is copied; the copies
// cover exactly the huge pages that hold blocks in use, whole, and carry their data.
void test_fork_copies_cover_every_live_huge_page_and_carry_its_data() {
  TestPool t(1, 512, 2);
  Block a = t.alloc(3 * kMiB);                  // pages 0-1 of a 2 MiB segment
  Block gap = t.alloc(4 * kMiB);                // freed below: page 2 then holds nothing
  Block b = t.alloc(1 * kMiB);                  // page 3
  Block small = t.alloc(3000);                  // a slab, on page 4
  Block big = t.alloc(kGiB + 2 * kMiB);         // composite: its 1 GiB page and one 2 MiB page
  t.pool->free(gap.ptr);
  for (const Block& x : {a, b, small, big}) fill(x, x.size, 0x5a);
  t.os.set_free_pages(PageKind::kHugetlb2M, 0);
  t.os.set_free_pages(PageKind::kHugetlb1G, 0);
  ForkHandler fork(t.os, *t.pool);
  fork.before();
  // Pages 0-1 (a), 3 (b) and 4 (the slab) of the 2 MiB segment; the composite's two pages.
  CHECK(fork.copied_bytes() == 4 * k2MiB + kGiB + k2MiB);
  for (const Block& x : {a, b, small, big}) fill(x, x.size, 0x11);  // the parent writes after the copy
  fork.in_child();                           // the child's view: the data as at the copy
  for (const Block& x : {a, b, small, big}) CHECK(intact(x, x.size, 0x5a));
  for (const Block& x : {a, b, small, big}) CHECK(t.pool->free(x.ptr) > 0);
  t.check_empty();
}

void test_eight_threads_allocating_and_freeing_across_threads() {
  TestPool t(2, 4096, 0);
  constexpr int kThreads = 8;
  constexpr int kOps = 3000;
  std::mutex mu;
  std::vector<std::pair<Block, uint8_t>> shared;
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  const int64_t start = t.allocated();
  for (int id = 0; id < kThreads; ++id) {
    threads.emplace_back([&, id] {
      std::mt19937_64 rng(id);
      std::vector<std::pair<Block, uint8_t>> live;
      auto check_free = [&](const std::pair<Block, uint8_t>& e) {
        if (!intact(e.first, e.first.size, e.second)) errors.fetch_add(1);
        if (t.pool->free(e.first.ptr) != e.first.size) errors.fetch_add(1);
      };
      for (int i = 0; i < kOps; ++i) {
        const int shape = static_cast<int>(rng() % 10);
        const size_t n = shape < 6 ? 1 + rng() % 4096 : shape < 8 ? 1 + rng() % kSmallMax : 1 + rng() % (12 * kMiB);
        Block b = t.alloc(n, static_cast<int>(rng() % 2));
        if (b.ptr == nullptr) {
          errors.fetch_add(1);
          continue;
        }
        const uint8_t seed = static_cast<uint8_t>(rng());
        fill(b, b.size, seed);
        if (rng() % 4 == 0) {
          std::lock_guard<std::mutex> lock(mu);
          shared.push_back({b, seed});
        } else {
          live.push_back({b, seed});
        }
        while (live.size() > 8) {
          const size_t k = rng() % live.size();
          check_free(live[k]);
          live[k] = live.back();
          live.pop_back();
        }
        if (rng() % 2 == 0) {
          std::pair<Block, uint8_t> e{};
          {
            std::lock_guard<std::mutex> lock(mu);
            if (shared.empty()) continue;
            e = shared.back();
            shared.pop_back();
          }
          check_free(e);  // most likely made by another thread
        }
        if (i % 1000 == 999) t.pool->release();
      }
      for (auto& e : live) check_free(e);
    });
  }
  for (auto& th : threads) th.join();
  for (auto& e : shared) {
    CHECK(intact(e.first, e.first.size, e.second));
    CHECK(t.pool->free(e.first.ptr) == e.first.size);
  }
  CHECK(errors.load() == 0);
  CHECK(t.allocated() == start);
  // Threads have exited: their caches went back to the central lists (pthread key destructor).
  t.check_empty();
}


// empty_cache() reaches every thread's cache: a thread that freed small objects and large blocks
// into its own cache, and now waits, gives them back while it is still alive.
void test_release_takes_back_what_an_idle_thread_keeps() {
  TestPool t(1, 512, 0);
  std::atomic<int> stage{0};
  std::thread idle([&] {
    std::vector<Block> blocks;
    for (int i = 0; i < 200; ++i) blocks.push_back(t.alloc(64 + 97 * i));
    for (int i = 0; i < 4; ++i) blocks.push_back(t.alloc(3 * kMiB));
    for (Block& b : blocks) t.pool->free(b.ptr);  // into this thread's cache
    stage.store(1);
    while (stage.load() != 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  while (stage.load() != 1) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  CHECK(t.allocated() == 0);
  CHECK(t.pool->thread_cached_bytes() > 12 * static_cast<int64_t>(kMiB));
  t.pool->release();  // the other thread is alive and waiting
  CHECK(t.pool->thread_cached_bytes() == 0);
  CHECK(t.reserved() == 0);
  CHECK(t.os.live_mappings() == 0);
  stage.store(2);
  idle.join();
  t.check_empty();
}

// Threads that miss together while a segment is being mapped wait for it: one map, not eight.
void test_threads_that_miss_together_map_one_segment() {
  TestPool t(1, 512, 0);
  t.os.set_map_delay_us(50000);  // the kernel zeroing 32 MiB of fresh huge pages
  constexpr int kThreads = 8;
  std::atomic<int> ready{0};
  std::vector<Block> got(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      ready.fetch_add(1);
      while (ready.load() < kThreads) {
      }
      got[i] = t.alloc(kMiB + kUnit);  // each fits the one segment with the others
    });
  }
  for (auto& th : threads) th.join();
  CHECK(t.os.map_calls() == 1);
  for (Block& b : got) {
    CHECK(b.ptr != nullptr);
    t.pool->free(b.ptr);
  }
  t.os.set_map_delay_us(0);
  t.check_empty();
}

// A thread waiting for a lock whose holder is slow sleeps instead of spinning.
void test_a_lock_whose_holder_is_slow_puts_its_waiters_to_sleep() {
  LockCheckExemption exempt;  // a lock of the test's own: starting threads under it is fine
  Lock lock;
  lock.lock();
  constexpr int kWaiters = 4;
  std::atomic<int64_t> waiter_cpu_ns{0};
  std::vector<std::thread> waiters;
  for (int i = 0; i < kWaiters; ++i) {
    waiters.emplace_back([&] {
      const int64_t t0 = thread_cpu_ns();
      lock.lock();
      lock.unlock();
      waiter_cpu_ns.fetch_add(thread_cpu_ns() - t0);
    });
  }
  constexpr int64_t kHoldNs = 300000000;
  std::this_thread::sleep_for(std::chrono::nanoseconds(kHoldNs));
  lock.unlock();
  for (auto& th : waiters) th.join();
  // Spinning (or yielding) waiters would burn up to the whole hold time each on an idle machine.
  std::printf("     %d waiters used %.2f ms of CPU in a %.0f ms wait\n", kWaiters, waiter_cpu_ns.load() / 1e6,
              kHoldNs / 1e6);
  CHECK(waiter_cpu_ns.load() < kHoldNs / 10);
}

// Note [Thread statistics]: a thread's allocations from its own cache, which fold nothing into the
// shared total, still reach the peak it reads.
void test_the_peak_of_a_single_thread_is_exact() {
  TestPool t(1, 512, 0);
  std::vector<Block> blocks;
  for (int i = 0; i < 60; ++i) blocks.push_back(t.alloc(1000));
  blocks.push_back(t.alloc(2 * kMiB));
  for (Block& b : blocks) t.pool->free(b.ptr);  // all cached by this thread
  blocks.clear();
  t.pool->reset_peaks();
  CHECK(t.pool->allocated_bytes().bytes.peak == 0);
  for (int i = 0; i < 50; ++i) blocks.push_back(t.alloc(1000));  // from the cache: no refill
  blocks.push_back(t.alloc(2 * kMiB));                        // from the cache: no heap
  const int64_t want = 50 * 1024 + 2 * static_cast<int64_t>(kMiB);
  for (Block& b : blocks) t.pool->free(b.ptr);
  const ByteStat s = t.pool->allocated_bytes().bytes;
  CHECK(s.current == 0);
  CHECK(s.peak == want);
  t.check_empty();
}

// A large block freed is kept by its thread for the next request of the same size: no heap
// operation; a second free of it is refused (the deleter's double-free check).
void test_a_thread_reuses_its_large_blocks_and_refuses_a_double_free() {
  TestPool t(1, 512, 0);
  Block a = t.alloc(3 * kMiB + 5);
  CHECK(t.pool->free(a.ptr) == a.size);
  CHECK(t.pool->free(a.ptr) == 0);  // kept in the cache, free to the deleter: a double free
  const int64_t allocs = t.allocs_of(PageKind::kHugetlb2M);
  Block b = t.alloc(3 * kMiB + 5);
  CHECK(b.ptr == a.ptr);
  CHECK(t.allocs_of(PageKind::kHugetlb2M) == allocs);
  Block c = t.alloc(3 * kMiB + 6);  // another request size: the heap
  CHECK(c.ptr != a.ptr);
  CHECK(t.allocs_of(PageKind::kHugetlb2M) == allocs + 1);
  t.pool->free(b.ptr);
  t.pool->free(c.ptr);
  t.check_empty();
}

// A block served by a fallback kind (no explicit huge page free) goes back to its heap when freed,
// not into the thread's cache, so that the next request asks for explicit huge pages again.
void test_a_fallback_block_is_not_kept_by_its_thread() {
  TestPool t(1, 0, 0);  // no explicit huge page: THP serves
  Block a = t.alloc(3 * kMiB);
  CHECK(t.allocs_of(PageKind::kThp) == 1);
  t.pool->free(a.ptr);
  CHECK(t.pool->thread_cached_bytes() == 0);
  t.os.set_free_pages(PageKind::kHugetlb2M, 64);
  t.pool->release();  // ends the back-off
  Block b = t.alloc(3 * kMiB);
  CHECK(t.allocs_of(PageKind::kHugetlb2M) == 1);
  t.pool->free(b.ptr);
  CHECK(t.pool->thread_cached_bytes() == static_cast<int64_t>(b.size));  // a first choice: kept
  t.check_empty();
}

// Setting a limit on idle memory takes back the large blocks threads keep, and they keep none after.
void test_setting_max_cached_takes_back_what_threads_keep() {
  TestPool t(1, 512, 0);
  Block a = t.alloc(3 * kMiB);
  t.pool->free(a.ptr);
  CHECK(t.pool->thread_cached_bytes() == static_cast<int64_t>(a.size));
  t.pool->set_max_cached(0);
  CHECK(t.pool->thread_cached_bytes() == 0);
  CHECK(t.reserved() == 0);  // the block's segment was idle beyond the limit: given back
  Block b = t.alloc(3 * kMiB);
  t.pool->free(b.ptr);
  CHECK(t.pool->thread_cached_bytes() == 0);
  t.check_empty();
}

// When the kernel refuses to grow a heap, the spans other threads keep come back to it before
// anything falls back to another page kind.
void test_a_refused_growth_takes_back_what_threads_keep_before_falling_back() {
  TestPool t(1, 16, 0);  // 32 MiB of 2 MiB pages: one segment
  std::atomic<int> stage{0};
  std::thread keeper([&] {
    std::vector<Block> blocks;
    for (int i = 0; i < 8; ++i) blocks.push_back(t.alloc(4 * kMiB));
    for (Block& b : blocks) t.pool->free(b.ptr);  // 32 MiB kept by this thread
    stage.store(1);
    while (stage.load() != 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  while (stage.load() != 1) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  CHECK(t.allocs_of(PageKind::kHugetlb2M) == 8);
  Block big = t.alloc(16 * kMiB);
  CHECK(t.allocs_of(PageKind::kHugetlb2M) == 9);
  CHECK(t.allocs_of(PageKind::kThp) == 0);
  t.pool->free(big.ptr);
  stage.store(2);
  keeper.join();
  t.check_empty();
}

}  // namespace
}  // namespace hpa

int main() {
  using namespace hpa;
  struct {
    const char* name;
    void (*fn)();
  } tests[] = {
#define TEST(f) {#f, f}
      TEST(test_every_size_class_allocates_aligned_distinct_blocks_and_frees_them),
      TEST(test_large_blocks_of_every_shape_are_exact_and_coalesce_back),
      TEST(test_a_dry_pool_falls_back_and_pages_that_come_back_are_used_again),
      TEST(test_a_failing_populate_is_a_fallback_not_a_crash),
      TEST(test_no_page_kind_left_is_a_null_block),
      TEST(test_kind_at_names_the_pages_under_an_address),
      TEST(test_max_cached_zero_gives_whole_segments_back_on_free),
      TEST(test_blocks_on_four_nodes_go_back_to_their_own_heaps),
      TEST(test_after_fork_the_child_never_reuses_inherited_memory_and_unmaps_it_when_freed),
      TEST(test_fork_copies_cover_every_live_huge_page_and_carry_its_data),
      TEST(test_eight_threads_allocating_and_freeing_across_threads),
      TEST(test_release_takes_back_what_an_idle_thread_keeps),
      TEST(test_threads_that_miss_together_map_one_segment),
      TEST(test_a_lock_whose_holder_is_slow_puts_its_waiters_to_sleep),
      TEST(test_the_peak_of_a_single_thread_is_exact),
      TEST(test_a_thread_reuses_its_large_blocks_and_refuses_a_double_free),
      TEST(test_a_refused_growth_takes_back_what_threads_keep_before_falling_back),
      TEST(test_a_fallback_block_is_not_kept_by_its_thread),
      TEST(test_setting_max_cached_takes_back_what_threads_keep),
#undef TEST
  };
  for (const auto& t : tests) {
    t.fn();
    std::printf("ok   %s\n", t.name);
  }
  std::printf("%zu tests passed\n", sizeof(tests) / sizeof(tests[0]));
  return 0;
}
