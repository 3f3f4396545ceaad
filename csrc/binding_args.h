// Arguments from Python checked and turned into the core's types, for the process allocator's
// module (bindings.cpp) and the tests' one (tests/native): a bad value is a ValueError naming it.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>

#include "os.h"
#include "placement.h"

namespace hpa {

// `numa_mode` -1: follow the process's memory policy; else a NumaMode over `numa_nodes`.
inline Placement make_placement(int numa_mode, uint64_t numa_nodes) {
  TORCH_CHECK_VALUE(numa_mode >= -1 && numa_mode <= static_cast<int>(NumaMode::kInterleave),
                    "hugepage_allocator: invalid NUMA mode ", numa_mode);
  return numa_mode < 0 ? Placement{} : Placement{static_cast<NumaMode>(numa_mode), numa_nodes};
}

inline PageKind to_kind(int kind) {
  TORCH_CHECK_VALUE(kind >= 0 && kind < kNumPageKinds, "hugepage_allocator: invalid page kind ", kind);
  return static_cast<PageKind>(kind);
}

}  // namespace hpa
