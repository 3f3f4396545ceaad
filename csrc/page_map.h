// Address -> block lookup, so the deleter can tell our pointers from foreign ones without a lock.
//
// Every block this project maps starts on a 2 MiB boundary and covers whole 2 MiB chunks, so a
// chunk holding a block's start belongs to that block alone: no foreign pointer can fall into it
// while the block is mapped. The map records, per 2 MiB chunk, the block starting there.
// A two-level radix tree over 48-bit user addresses: a fixed root of 2^14 slots and leaves of
// 2^13 slots (64 KiB, one per 16 GiB of address space), created on first use and never freed.
// Reads are lock-free; writes REQUIRE the caller to serialise them (BlockPool's metadata lock).
#pragma once

#include <atomic>
#include <cstdint>
#include <new>

namespace hpa {

template <typename T>
class PageMap {
 public:
  static constexpr int kChunkShift = 21;
  static constexpr int kAddressBits = 48;
  static constexpr int kLeafBits = 13;
  static constexpr int kRootBits = kAddressBits - kChunkShift - kLeafBits;

  // The entry for the chunk holding `addr`, or nullptr.
  T* get(uintptr_t addr) const {
    if (addr >> kAddressBits) return nullptr;
    const uintptr_t chunk = addr >> kChunkShift;
    const Leaf* leaf = root_[chunk >> kLeafBits].load(std::memory_order_acquire);
    if (leaf == nullptr) return nullptr;
    return leaf->slot[chunk & kLeafMask].load(std::memory_order_acquire);
  }

  // Sets the entry for the chunk holding `addr`. Returns false when the address is outside the
  // map's range or a leaf cannot be allocated. REQUIRES: writers serialised.
  [[nodiscard]] bool set(uintptr_t addr, T* value) {
    if (addr >> kAddressBits) return false;
    const uintptr_t chunk = addr >> kChunkShift;
    std::atomic<Leaf*>& root_slot = root_[chunk >> kLeafBits];
    Leaf* leaf = root_slot.load(std::memory_order_relaxed);
    if (leaf == nullptr) {
      leaf = new (std::nothrow) Leaf();
      if (leaf == nullptr) return false;
      root_slot.store(leaf, std::memory_order_release);
    }
    leaf->slot[chunk & kLeafMask].store(value, std::memory_order_release);
    return true;
  }

 private:
  static constexpr uintptr_t kLeafMask = (uintptr_t{1} << kLeafBits) - 1;
  struct Leaf {
    std::atomic<T*> slot[size_t{1} << kLeafBits] = {};
  };
  std::atomic<Leaf*> root_[size_t{1} << kRootBits] = {};
};

}  // namespace hpa
