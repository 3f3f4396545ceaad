// Size classes of small requests: 64-byte multiples (PyTorch's alignment) up to 1 KiB, then four
// per power of two up to kSmallMax, so that an object wastes at most a quarter of its size (an
// eighth on average). Each class is cut from slabs of at least eight objects and one 64 KiB unit.
// The tables are built at compile time: a lookup on the hot path is one load.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "os.h"
#include "page_map.h"

namespace hpa {

constexpr size_t kSmallMax = 256 * kKiB;
constexpr int kNumClasses = 49;  // class 0 is unused

namespace detail {

struct SizeClassTable {
  std::array<size_t, kNumClasses> size{};
  std::array<size_t, kNumClasses> slab_units{};
  std::array<uint8_t, (kSmallMax >> 6) + 1> of{};  // index: (n + 63) >> 6

  constexpr SizeClassTable() {
    int c = 1;
    for (size_t s = 64; s <= kKiB; s += 64) size[c++] = s;
    for (size_t base = kKiB; base < kSmallMax; base *= 2)
      for (size_t q = 1; q <= 4; ++q) size[c++] = base + q * (base / 4);
    for (int k = 1; k < kNumClasses; ++k) {
      const size_t want = kUnit > 8 * size[k] ? kUnit : 8 * size[k];
      slab_units[k] = (want + kUnit - 1) / kUnit;
    }
    int k = 1;
    for (size_t i = 1; i < of.size(); ++i) {
      while (size[k] < i * 64) ++k;
      of[i] = static_cast<uint8_t>(k);
    }
  }
};

inline constexpr SizeClassTable kSizeClassTable{};
static_assert(kSizeClassTable.size[kNumClasses - 1] == kSmallMax, "the last class is kSmallMax");

}  // namespace detail

class SizeClasses {
 public:
  // REQUIRES: 0 < n <= kSmallMax.
  static int of(size_t n) { return detail::kSizeClassTable.of[(n + 63) >> 6]; }
  static size_t size(int c) { return detail::kSizeClassTable.size[c]; }
  static size_t slab_units(int c) { return detail::kSizeClassTable.slab_units[c]; }  // >= 8 objects, >= one unit
};

}  // namespace hpa
