// NUMA topology: which nodes exist and which node each CPU belongs to, read once from sysfs
// through the OS layer (so a fake OS can describe a 4- or 8-node machine).
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
  // Reads /sys/devices/system/node. A system without that directory (or with a malformed one)
  // is described as a single node 0 holding every CPU.
  explicit Topology(Os& os);

  int num_nodes() const { return static_cast<int>(nodes_.size()); }
  const std::vector<int>& nodes() const { return nodes_; }
  bool has_node(int node) const;
  // Node of `cpu`; node 0 for an unknown or negative cpu.
  int node_of_cpu(int cpu) const;

 private:
  std::vector<int> nodes_;                  // online node ids, ascending, each < kMaxNodes
  std::vector<int> cpu_to_node_;  // index: cpu id
};

}  // namespace hpa
