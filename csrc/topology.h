// NUMA topology: which nodes exist (and this process may use), which node each CPU belongs to and
// how far the nodes are from each other, read once from sysfs and procfs through the OS layer (so
// a fake OS can describe a 4- or 8-node machine).
#pragma once

#include <string>
#include <vector>

#include "os.h"

namespace hpa {

constexpr int kMaxNodes = 64;

// Parses a kernel cpulist/nodelist ("0-3,8,10-11") into ids. Returns false on malformed input.
bool parse_id_list(const std::string& text, std::vector<int>* ids);

class Topology {
 public:
  // Reads /sys/devices/system/node and the process's Mems_allowed_list (a cpuset, as containers
  // set, may forbid some nodes: those are left out). A system without that directory (or with a
  // malformed one) is described as a single node 0 holding every CPU.
  explicit Topology(Os& os);

  int num_nodes() const { return static_cast<int>(nodes_.size()); }
  const std::vector<int>& nodes() const { return nodes_; }
  NodeMask node_mask() const { return mask_; }
  bool has_node(int node) const { return node >= 0 && node < kMaxNodes && (mask_ & node_bit(node)); }
  // Node of `cpu`; the first node for an unknown or negative cpu.
  int node_of_cpu(int cpu) const;
  // Every node, nearest to `node` first (by the kernel's distance table, then by id); `node` first.
  // REQUIRES: has_node(node).
  const std::vector<int>& by_distance(int node) const { return by_distance_[node]; }

 private:
  // The process's Mems_allowed_list from /proc/self/status; false when it cannot be read.
  static bool read_mems_allowed(Os& os, std::vector<int>* allowed);

  std::vector<int> nodes_;        // usable node ids, ascending, each < kMaxNodes
  NodeMask mask_ = 0;
  std::vector<int> cpu_to_node_;  // index: cpu id
  std::vector<std::vector<int>> by_distance_;  // index: node id
};

}  // namespace hpa
