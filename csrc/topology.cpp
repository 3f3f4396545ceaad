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
    std::vector<int> allowed;
    const bool restricted = read_mems_allowed(os, &allowed);
    for (int node : online)
      if (node < kMaxNodes && (!restricted || std::binary_search(allowed.begin(), allowed.end(), node)))
        nodes_.push_back(node);
  }
  if (nodes_.empty()) nodes_.push_back(0);
  for (int node : nodes_) mask_ |= node_bit(node);
  by_distance_.resize(kMaxNodes);
  for (int node : nodes_) {
    const std::string dir = "/sys/devices/system/node/node" + std::to_string(node);
    std::vector<int> cpus;
    if (os.read_file((dir + "/cpulist").c_str(), &text) == 0 && parse_id_list(text, &cpus)) {
      for (int cpu : cpus) {
        if (static_cast<size_t>(cpu) >= cpu_to_node_.size()) cpu_to_node_.resize(cpu + 1, nodes_.front());
        cpu_to_node_[cpu] = node;
      }
    }
    // "10 21 21 ...": the distance to every online node, in the order of the online list.
    std::vector<long> distance(kMaxNodes, 1000);
    if (os.read_file((dir + "/distance").c_str(), &text) == 0) {
      const char* p = text.c_str();
      for (int other : online) {
        char* end = nullptr;
        const long d = std::strtol(p, &end, 10);
        if (end == p) break;
        if (other < kMaxNodes) distance[other] = d;
        p = end;
      }
    }
    distance[node] = -1;  // itself first, whatever the table says
    std::vector<int>& order = by_distance_[node];
    order = nodes_;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return distance[a] < distance[b]; });
  }
}

bool Topology::read_mems_allowed(Os& os, std::vector<int>* allowed) {
  std::string status;
  if (os.read_file("/proc/self/status", &status) != 0) return false;
  const std::string key = "Mems_allowed_list:";
  const size_t at = status.find(key);
  if (at == std::string::npos) return false;
  const size_t begin = at + key.size();
  const size_t end = status.find('\n', begin);
  return parse_id_list(status.substr(begin, end == std::string::npos ? std::string::npos : end - begin), allowed) &&
         !allowed->empty();
}

int Topology::node_of_cpu(int cpu) const {
  if (cpu < 0 || static_cast<size_t>(cpu) >= cpu_to_node_.size()) return nodes_.front();
  return cpu_to_node_[cpu];
}

}  // namespace hpa
