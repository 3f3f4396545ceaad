// A pool's statistics as the flat dict memory_stats() returns (keys `<stat>.<pool>.<metric>` and
// `<event>[.<pool>]`, README: Statistics), for the process allocator's module and the tests' one.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>

#include "pool.h"
#include "stats.h"

namespace hpa {

using StatsDict = std::unordered_map<std::string, int64_t>;

// Puts `s` as `<stat>.<pool>.current|peak|allocated|freed`.
void put_byte(StatsDict& d, const std::string& stat, const std::string& pool, const ByteStat& s);
// Every heap's stats, summed by node, by page kind and in all; what callers hold and request;
// the bytes mapped; the bytes threads keep.
StatsDict pool_stats(Pool& pool);

}  // namespace hpa
