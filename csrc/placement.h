// NUMA placement: which node's heaps serve a request, decided from the placement setting, the
// process's memory policy and the CPU the request comes from.
//
// Modes (the `numa_policy` setting):
//   local         the node of the calling CPU. When its explicit huge pages run out, other nodes'
//                 explicit huge pages (nearest first) come before THP and ordinary pages, which
//                 are then taken on the home node.
//   preferred:N   as local, with node N as home whatever the CPU.
//   bind:NODES    the home is the calling CPU's node if it is one of NODES, else the nearest of
//                 NODES; only NODES' explicit huge pages may serve; THP and ordinary pages are
//                 bound to the home node (MPOL_BIND), so nothing lands outside NODES.
//   interleave    large requests (above the small-object limit) go to heaps whose segments are
//                 interleaved page by page over the nodes (MPOL_INTERLEAVE), for memory read by
//                 every socket; small objects stay local.
// Unless the setting names a mode, the process's memory policy decides (numactl --membind=1 is
// bind:1, --interleave=all is interleave, --preferred=1 is preferred:1); with none, local.
//
// A block always goes back to the heap it came from (its segment's node) whatever thread frees
// it: a heap is a (node, page kind) pair, and free() finds it through the segment.
#pragma once

#include <cstdint>
#include <string>

#include "os.h"
#include "topology.h"

namespace hpa {

enum class NumaMode : uint8_t { kLocal = 0, kPreferred = 1, kBind = 2, kInterleave = 3 };

struct Placement {
  NumaMode mode = NumaMode::kLocal;
  NodeMask nodes = 0;  // kPreferred: one node; kBind, kInterleave: the set (0: every node)
};

// The heaps of node kInterleaveNode hold segments interleaved over the placement's nodes.
constexpr int kInterleaveNode = kMaxNodes;

// Where one request may go: `home`'s heaps in the plan's order, and, for explicit huge pages
// only, the heaps of the `spill` nodes (nearest to home first) before leaving huge pages.
struct Route {
  int home = 0;
  NodeMask spill = 0;
};

// The placement the calling thread's memory policy (what numactl set) asks for, limited to the
// topology's nodes; local when there is none or it names no usable node.
Placement placement_from_policy(MemPolicy policy, NodeMask nodes, const Topology& topology);

// A node set in the kernel's list syntax: "0-1", "0,2-3".
std::string node_list(NodeMask nodes);

// The placement in effect: `given`, or when `follow_policy`, what the calling thread's memory
// policy asks for (Os::thread_policy).
Placement effective_placement(Os& os, const Topology& topology, bool follow_policy, const Placement& given);

// The placement in the setting's words: "local", "preferred:1", "bind:0-1", "interleave:0,2".
std::string describe(const Placement& p, const Topology& topology);

// The route of a request from a CPU of `cpu_node`; `large`: above the small-object limit.
// REQUIRES: p.nodes names only nodes of `topology` (or is 0).
Route route(const Placement& p, const Topology& topology, int cpu_node, bool large);

}  // namespace hpa
