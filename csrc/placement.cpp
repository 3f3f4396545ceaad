#include "placement.h"

namespace hpa {

namespace {

int lowest(NodeMask m) { return __builtin_ctzll(m); }

// The node of `nodes` nearest to `from`.
int nearest(NodeMask nodes, int from, const Topology& topology) {
  if (topology.has_node(from))
    for (int n : topology.by_distance(from))
      if (nodes & node_bit(n)) return n;
  return lowest(nodes);
}

}  // namespace

std::string node_list(NodeMask m) {
  std::string out;
  for (int lo = 0; lo < kMaxNodes;) {
    if (!(m & node_bit(lo))) {
      ++lo;
      continue;
    }
    int hi = lo;
    while (hi + 1 < kMaxNodes && (m & node_bit(hi + 1))) ++hi;
    if (!out.empty()) out += ",";
    out += std::to_string(lo);
    if (hi > lo) out += "-" + std::to_string(hi);
    lo = hi + 1;
  }
  return out;
}

Placement placement_from_policy(MemPolicy policy, NodeMask nodes, const Topology& topology) {
  nodes &= topology.node_mask();
  if (nodes == 0) return {};
  switch (policy) {
    case MemPolicy::kDefault: return {};
    case MemPolicy::kPreferred: return {NumaMode::kPreferred, node_bit(lowest(nodes))};
    case MemPolicy::kBind: return {NumaMode::kBind, nodes};
    case MemPolicy::kInterleave: return {NumaMode::kInterleave, nodes};
  }
  return {};
}

Placement effective_placement(Os& os, const Topology& topology, bool follow_policy, const Placement& given) {
  if (!follow_policy) return given;
  MemPolicy policy = MemPolicy::kDefault;
  NodeMask nodes = 0;
  if (os.thread_policy(&policy, &nodes) != 0) return {};
  return placement_from_policy(policy, nodes, topology);
}

std::string describe(const Placement& p, const Topology& topology) {
  const NodeMask nodes = p.nodes != 0 ? p.nodes : topology.node_mask();
  switch (p.mode) {
    case NumaMode::kLocal: return "local";
    case NumaMode::kPreferred: return "preferred:" + node_list(nodes);
    case NumaMode::kBind: return "bind:" + node_list(nodes);
    case NumaMode::kInterleave: return "interleave:" + node_list(nodes);
  }
  return "local";
}

Route route(const Placement& p, const Topology& topology, int cpu_node, bool large) {
  const NodeMask all = topology.node_mask();
  const NodeMask nodes = p.nodes != 0 ? p.nodes & all : all;
  Route r;
  switch (p.mode) {
    case NumaMode::kLocal:
      r.home = cpu_node;
      r.spill = all & ~node_bit(cpu_node);
      break;
    case NumaMode::kPreferred:
      r.home = lowest(nodes);
      r.spill = all & ~node_bit(r.home);
      break;
    case NumaMode::kBind:
      r.home = nearest(nodes, cpu_node, topology);
      r.spill = nodes & ~node_bit(r.home);
      break;
    case NumaMode::kInterleave:
      if (large && (nodes & (nodes - 1)) != 0) {  // two nodes or more
        r.home = kInterleaveNode;
        r.spill = 0;
      } else {
        r.home = nearest(nodes, cpu_node, topology);
        r.spill = nodes & ~node_bit(r.home);
      }
      break;
  }
  return r;
}

}  // namespace hpa
