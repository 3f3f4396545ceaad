// Records of the pool: a Segment is one mapping taken from the kernel; a Span is a run of 64 KiB
// units inside one segment, free, handed out whole (a large block), or cut into equal objects
// (a slab of the small arena). Records are recycled, never freed while the pool lives, so a
// lock-free reader holding a stale pointer reads a valid (if outdated) record. A recycled record
// is reset() before it is handed out again: nothing of its previous life may leak into the next
// (a segment dropped in a fork child once passed its `inherited` mark on to the child's next
// segment, whose frees then corrupted the heap).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "os.h"
#include "page_map.h"
#include "sync.h"

namespace hpa {

struct Segment {
  uintptr_t start = 0;
  size_t size = 0;        // bytes mapped
  size_t head_1g = 0;     // composite segments: bytes of 1 GiB pages at the start
  PageKind kind = PageKind::kBase;
  int16_t node = 0;
  // Mapped before a fork() of which this process is the child: its pages are shared
  // copy-on-write with the parent, so its free space is never reused here (Note [Fork]).
  bool inherited = false;
  Segment* prev = nullptr;  // the heap's list of segments
  Segment* next = nullptr;

  void reset() { *this = Segment{}; }
};

// kCached: a large span its caller freed, kept in a thread's cache (thread_cache.h) for that
// thread's next request of the same size; to its heap it is still handed out, to the deleter it
// is free (a second free of it is a double free).
enum class SpanState : uint8_t { kFree = 0, kLarge = 1, kSlab = 2, kCached = 3 };

// Line-aligned, so that a thread freeing one block never writes a line that holds another
// block's record (cross-thread frees would bounce it): the first line holds what the deleter and
// the heaps read, the second what a slab's central list writes.
struct alignas(kCacheLine) Span {
  // Read lock-free by the deleter (Pool::free); written under the owning heap's lock, or by the
  // thread that holds the span (kLarge, kCached).
  std::atomic<uintptr_t> start{0};
  std::atomic<SpanState> state{SpanState::kFree};
  uint8_t size_class = 0;       // kSlab
  bool in_partial = false;      // kSlab: on its size class's list of slabs with free objects
  bool fallback = false;        // kLarge: not of the kind or node its request preferred, so not
                                // kept in a thread cache when freed (its heap may serve better)
  uint32_t object_size = 0;     // kSlab
  size_t units = 0;             // length in 64 KiB units
  Segment* segment = nullptr;
  size_t requested = 0;         // kLarge: bytes asked for
  Span* prev = nullptr;         // free lists of the heap, partial lists of the arena, spare lists,
                                // chains of spans on their way back to a heap
  Span* next = nullptr;

  // kSlab only (guarded by the owning size class's lock).
  alignas(kCacheLine) void* free_objects = nullptr;  // intrusive list threaded through the free objects
  uintptr_t bump = 0;            // objects at or beyond this address were never handed out
  uint32_t live = 0;             // objects handed out (to users or thread caches)
  uint32_t capacity = 0;

  // Every field to its initial value; the atomics by store, as a stale reader may still look.
  void reset() {
    start.store(0, std::memory_order_relaxed);
    state.store(SpanState::kFree, std::memory_order_relaxed);
    units = 0;
    segment = nullptr;
    prev = next = nullptr;
    requested = 0;
    free_objects = nullptr;
    bump = 0;
    object_size = live = capacity = 0;
    size_class = 0;
    in_partial = false;
    fallback = false;
  }

  uintptr_t begin() const { return start.load(std::memory_order_relaxed); }
  uintptr_t end() const { return begin() + units * kUnit; }
  size_t bytes() const { return units * kUnit; }
};

// The pool's address maps. `spans`: the first and last 64 KiB unit of every span, every unit of a
// slab (what the deleter and coalescing look up). `segments`: every 2 MiB of every segment while
// it is mapped (segments are 2 MiB aligned and sized), so that an address inside the pool's
// memory is known as such even where it starts no block (Note [Foreign pointers], allocator.h).
struct AddressMaps {
  PageMap<Span> spans;
  PageMap<Segment, 21> segments;
};

}  // namespace hpa
