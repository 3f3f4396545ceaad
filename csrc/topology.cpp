#include "topology.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>

namespace hpa {

bool parse_id_list(const std::string& text, std::vector<int>* ids) {
  ids->clear();
  size_t i = 0;
  const size_t n = text.size();
  auto skip_space = [&] { while (i < n && std::isspace(static_cast<unsigned char>(text[i]))) ++i; };
  auto number = [&](int* out) {
    if (i >= n || !std::isdigit(static_cast<unsigned char>(text[i]))) return false;
    long v = 0;
    while (i < n && std::isdigit(static_cast<unsigned char>(text[i]))) {
      v = v * 10 + (text[i++] - '0');
      if (v > 1 << 20) return false;
    }
    *out = static_cast<int>(v);
    return true;
  };
  skip_space();
  while (i < n) {
    int lo = 0, hi = 0;
    if (!number(&lo)) return false;
    hi = lo;
    if (i < n && text[i] == '-') {
      ++i;
      if (!number(&hi) || hi < lo) return false;
    }
    for (int v = lo; v <= hi; ++v) ids->push_back(v);
    skip_space();
    if (i < n && text[i] == ',') {
      ++i;
      skip_space();
      continue;
    }
    if (i < n) return false;
  }
  std::sort(ids->begin(), ids->end());
  ids->erase(std::unique(ids->begin(), ids->end()), ids->end());
  return true;
}

Topology::Topology(Os& os) {
  std::string text;
  std::vector<int> online;
  if (os.read_file("/sys/devices/system/node/online", &text) == 0 && parse_id_list(text, &online)) {
    for (int node : online)
      if (node < kMaxNodes) nodes_.push_back(node);
  }
  if (nodes_.empty()) nodes_.push_back(0);
  for (int node : nodes_) {
    const std::string path = "/sys/devices/system/node/node" + std::to_string(node) + "/cpulist";
    std::vector<int> cpus;
    if (os.read_file(path.c_str(), &text) != 0 || !parse_id_list(text, &cpus)) continue;
    for (int cpu : cpus) {
      if (static_cast<size_t>(cpu) >= cpu_to_node_.size()) cpu_to_node_.resize(cpu + 1, nodes_.front());
      cpu_to_node_[cpu] = node;
    }
  }
}

bool Topology::has_node(int node) const {
  return std::binary_search(nodes_.begin(), nodes_.end(), node);
}

int Topology::node_of_cpu(int cpu) const {
  if (cpu < 0 || static_cast<size_t>(cpu) >= cpu_to_node_.size()) return nodes_.front();
  return cpu_to_node_[cpu];
}

}  // namespace hpa
