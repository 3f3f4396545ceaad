#include "pool_stats.h"

namespace hpa {

void put_byte(StatsDict& d, const std::string& stat, const std::string& pool, const ByteStat& s) {
  d[stat + "." + pool + ".current"] = s.current;
  d[stat + "." + pool + ".peak"] = s.peak;
  d[stat + "." + pool + ".allocated"] = s.allocated;
  d[stat + "." + pool + ".freed"] = s.freed;
}

namespace {

void put_pool(StatsDict& d, const std::string& pool, const PoolStats& s) {
#define HPA_PUT_BYTE(name) put_byte(d, #name, pool, s.name);
  HPA_BYTE_STATS(HPA_PUT_BYTE)
#undef HPA_PUT_BYTE
  const std::string suffix = pool == "all" ? "" : "." + pool;
#define HPA_PUT_EVENT(name) d[#name + suffix] = s.name;
  HPA_EVENT_STATS(HPA_PUT_EVENT)
#undef HPA_PUT_EVENT
}

}  // namespace

StatsDict pool_stats(Pool& pool) {
  StatsDict d;
  PoolStats all;
  PoolStats by_kind[kNumPageKinds];
  for (int node : pool.heap_nodes()) {
    PoolStats node_total;
    for (int k = 0; k < kNumPageKinds; ++k) {
      const PoolStats s = pool.heap_stats(node, static_cast<PageKind>(k));
      by_kind[k].merge(s);
      node_total.merge(s);
    }
    all.merge(node_total);
    put_pool(d, node == kInterleaveNode ? std::string("interleave") : "node" + std::to_string(node), node_total);
  }
  for (int k = 0; k < kNumPageKinds; ++k) put_pool(d, page_kind_name(static_cast<PageKind>(k)), by_kind[k]);
  put_pool(d, "all", all);  // events summed over heaps; bytes replaced below
  const ThreadCaches::CallerBytes held = pool.allocated_bytes();
  const ByteStat& allocated = held.bytes;
  put_byte(d, "allocated_bytes", "all", allocated);
  put_byte(d, "reserved_bytes", "all", pool.reserved_bytes().snapshot());
  d["thread_cached_bytes.all.current"] = pool.thread_cached_bytes();
  // Requested: what callers hold less the slack of large spans (a small object counts its class).
  d["requested_bytes.all.current"] = allocated.current - (held.slack_allocated - held.slack_freed);
  d["requested_bytes.all.allocated"] = allocated.allocated - held.slack_allocated;
  d["requested_bytes.all.freed"] = allocated.freed - held.slack_freed;
  return d;
}

}  // namespace hpa
