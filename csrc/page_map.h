// Address -> record lookup for the deleter and for coalescing, without a lock.
//
// The map has one slot per unit (2^kShift bytes; 64 KiB by default) of the 48-bit user address
// space, as a two-level radix tree: a fixed root and leaves of 2^15 slots (256 KiB; for 64 KiB
// units one leaf per 2 GiB of address space) created on first use, by compare-and-swap, and never
// freed. What the slots hold is the pool's business (see pool.h: the first and last unit of every
// span, every unit of a slab; and, in a map of 2 MiB units, every unit of a segment); unmapped
// memory has empty slots, so a foreign pointer finds nothing.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>

namespace hpa {

constexpr int kUnitShift = 16;
constexpr size_t kUnit = size_t{1} << kUnitShift;  // 64 KiB: the granularity of spans

template <typename T, int kShift = kUnitShift>
class PageMap {
 public:
  static constexpr int kAddressBits = 48;
  static constexpr int kLeafBits = 15;
  static constexpr int kRootBits = kAddressBits - kShift - kLeafBits;
  static constexpr size_t kMapUnit = size_t{1} << kShift;

  PageMap() = default;
  PageMap(const PageMap&) = delete;
  PageMap& operator=(const PageMap&) = delete;
  ~PageMap() {
    for (auto& slot : root_) delete slot.load(std::memory_order_relaxed);
  }

  // The slot of the unit holding `addr`, or nullptr.
  T* get(uintptr_t addr) const {
    if (addr >> kAddressBits) return nullptr;
    const uintptr_t unit = addr >> kShift;
    const Leaf* leaf = root_[unit >> kLeafBits].load(std::memory_order_acquire);
    if (leaf == nullptr) return nullptr;
    return leaf->slot[unit & kLeafMask].load(std::memory_order_acquire);
  }

  // Sets the slot of the unit holding `addr`. False when the address is outside the map's range
  // or a leaf cannot be allocated. Safe against concurrent set() of other slots.
  [[nodiscard]] bool set(uintptr_t addr, T* value) {
    if (addr >> kAddressBits) return false;
    const uintptr_t unit = addr >> kShift;
    std::atomic<Leaf*>& root_slot = root_[unit >> kLeafBits];
    Leaf* leaf = root_slot.load(std::memory_order_acquire);
    if (leaf == nullptr) {
      Leaf* fresh = new (std::nothrow) Leaf();
      if (fresh == nullptr) return false;
      if (root_slot.compare_exchange_strong(leaf, fresh, std::memory_order_acq_rel)) {
        leaf = fresh;
      } else {
        delete fresh;  // another thread created it first; `leaf` now holds theirs
      }
    }
    leaf->slot[unit & kLeafMask].store(value, std::memory_order_release);
    return true;
  }

  // Ensures the leaves covering [addr, addr + size) exist, so that set() there cannot fail.
  [[nodiscard]] bool prepare(uintptr_t addr, size_t size) {
    for (uintptr_t a = addr; a < addr + size; a += kMapUnit << kLeafBits)
      if (!set_if_absent(a)) return false;
    return set_if_absent(addr + size - 1);
  }

  // Sets the slot of every unit in [addr, addr + size). REQUIRES: prepare() succeeded for it.
  void set_range(uintptr_t addr, size_t size, T* value) {
    for (uintptr_t a = addr; a < addr + size; a += kMapUnit) (void)set(a, value);
  }

 private:
  bool set_if_absent(uintptr_t addr) {
    if (get(addr) != nullptr) return true;
    if (addr >> kAddressBits) return false;
    const uintptr_t unit = addr >> kShift;
    if (root_[unit >> kLeafBits].load(std::memory_order_acquire) != nullptr) return true;
    return set(addr, nullptr);
  }

  static constexpr uintptr_t kLeafMask = (uintptr_t{1} << kLeafBits) - 1;
  struct Leaf {
    std::atomic<T*> slot[size_t{1} << kLeafBits] = {};
  };
  std::atomic<Leaf*> root_[size_t{1} << kRootBits] = {};
};

}  // namespace hpa
