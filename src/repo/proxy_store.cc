#include "repo/proxy_store.h"

#include <algorithm>
#include <deque>
#include <map>
#include <nlohmann/json.hpp>

namespace ds::repo {
namespace {

using json = nlohmann::json;

bool IsHex64(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace

Result<StorePolicy> ParseStorePolicy(std::string_view s) {
  if (s == "both") return StorePolicy::kBoth;
  if (s == "full") return StorePolicy::kFull;
  if (s == "delta") return StorePolicy::kDelta;
  return Error(ErrorCode::kInvalidArgument,
               "--store is full, delta or both, got '" + std::string(s) + "'");
}

const char* StorePolicyName(StorePolicy p) {
  switch (p) {
    case StorePolicy::kBoth:
      return "both";
    case StorePolicy::kFull:
      return "full";
    case StorePolicy::kDelta:
      return "delta";
  }
  return "unknown";
}

int SignedRelease::FindVersion(std::string_view sha256) const {
  for (size_t i = 0; i < versions.size(); ++i) {
    if (versions[i].sha256 == sha256) return static_cast<int>(i);
  }
  return -1;
}

const SignedRelease::Delta* SignedRelease::FindDelta(std::string_view sha256) const {
  for (const Delta& d : deltas) {
    if (d.sha256 == sha256) return &d;
  }
  return nullptr;
}

Result<SignedRelease> ParseSignedRelease(std::string_view envelope) {
  const json j = json::parse(envelope, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("signed") || !j["signed"].is_object()) {
    return Error(ErrorCode::kProtocol, "release metadata has no \"signed\" object");
  }
  const json& s = j["signed"];
  SignedRelease r;
  if (s.contains("artifact") && s["artifact"].is_string()) r.artifact = s["artifact"];
  auto str = [](const json& o, const char* k) {
    return o.contains(k) && o[k].is_string() ? o[k].get<std::string>() : std::string();
  };
  auto u64 = [](const json& o, const char* k) -> std::optional<uint64_t> {
    if (!o.contains(k) || !o[k].is_number_unsigned()) return std::nullopt;
    return o[k].get<uint64_t>();
  };
  if (s.contains("versions") && s["versions"].is_array()) {
    for (const json& v : s["versions"]) {
      if (!v.is_object()) continue;
      SignedRelease::Version x{str(v, "version"), str(v, "sha256"), u64(v, "length").value_or(0)};
      if (!IsHex64(x.sha256) || !u64(v, "length")) {
        return Error(ErrorCode::kProtocol, "release metadata lists a malformed version");
      }
      r.versions.push_back(std::move(x));
    }
  }
  if (s.contains("deltas") && s["deltas"].is_array()) {
    for (const json& d : s["deltas"]) {
      if (!d.is_object()) continue;
      SignedRelease::Delta x;
      x.id = d.contains("id") && d["id"].is_number_integer() ? d["id"].get<int64_t>() : 0;
      x.base_sha256 = str(d, "base_sha256");
      x.result_sha256 = str(d, "result_sha256");
      x.sha256 = str(d, "sha256");
      x.length = u64(d, "length").value_or(0);
      if (!IsHex64(x.base_sha256) || !IsHex64(x.result_sha256) || !IsHex64(x.sha256)) {
        return Error(ErrorCode::kProtocol, "release metadata lists a malformed delta");
      }
      r.deltas.push_back(std::move(x));
    }
  }
  return r;
}

std::optional<std::vector<SignedRelease::Delta>> CheapestDeltaPath(const SignedRelease& release,
                                                                   std::string_view from,
                                                                   std::string_view to,
                                                                   size_t max_steps) {
  // Bellman-Ford bounded by |max_steps| rounds: cost[v] after round k is the cheapest way in at
  // most k deltas. Releases hold tens of deltas, so this is cheap.
  struct Best {
    uint64_t cost = UINT64_MAX;
    int via = -1;  // Index of the last delta.
  };
  std::map<std::string, Best, std::less<>> best;
  best[std::string(from)] = Best{0, -1};
  for (size_t round = 0; round < max_steps; ++round) {
    bool changed = false;
    std::map<std::string, Best, std::less<>> next = best;
    for (size_t i = 0; i < release.deltas.size(); ++i) {
      const SignedRelease::Delta& d = release.deltas[i];
      auto b = best.find(d.base_sha256);
      if (b == best.end() || b->second.cost == UINT64_MAX) continue;
      const uint64_t cost = b->second.cost + d.length;
      Best& r = next[d.result_sha256];
      if (cost < r.cost) {
        r = Best{cost, static_cast<int>(i)};
        changed = true;
      }
    }
    best = std::move(next);
    if (!changed) break;
  }
  auto it = best.find(to);
  if (it == best.end() || it->second.via < 0) return std::nullopt;
  std::vector<SignedRelease::Delta> path;
  std::string at(to);
  while (at != from && path.size() <= max_steps) {
    const int via = best[at].via;
    if (via < 0) return std::nullopt;
    path.push_back(release.deltas[static_cast<size_t>(via)]);
    at = release.deltas[static_cast<size_t>(via)].base_sha256;
  }
  if (at != from || path.size() > max_steps) return std::nullopt;
  std::reverse(path.begin(), path.end());
  return path;
}

bool IsKeyframe(size_t index, int every) {
  return every <= 1 || index % static_cast<size_t>(every) == 0;
}

std::optional<RebuildPlan> PlanRebuild(const SignedRelease& release, size_t target,
                                       int keyframe_every,
                                       const std::function<bool(const std::string&)>& stored_full) {
  if (target >= release.versions.size()) return std::nullopt;
  std::map<std::string, size_t> index;  // sha256 -> first version index at or below the target.
  for (size_t i = 0; i <= target; ++i) index.emplace(release.versions[i].sha256, i);
  auto is_source = [&](size_t i) {
    return IsKeyframe(i, keyframe_every) || stored_full(release.versions[i].sha256);
  };
  if (is_source(target)) return RebuildPlan{target, {}};
  // Breadth-first backwards from the target over signed deltas: fewest patches to apply.
  std::map<size_t, const SignedRelease::Delta*> via;  // Version -> delta leading from it.
  std::deque<size_t> frontier{target};
  std::map<size_t, bool> seen{{target, true}};
  while (!frontier.empty()) {
    const size_t node = frontier.front();
    frontier.pop_front();
    for (const SignedRelease::Delta& d : release.deltas) {
      if (d.result_sha256 != release.versions[node].sha256) continue;
      auto base = index.find(d.base_sha256);
      if (base == index.end() || seen.count(base->second)) continue;
      seen[base->second] = true;
      via[base->second] = &d;
      if (is_source(base->second)) {
        RebuildPlan plan;
        plan.source = base->second;
        const std::string& goal = release.versions[target].sha256;
        for (size_t v = base->second; release.versions[v].sha256 != goal;) {
          auto step = via.find(v);
          if (step == via.end() || plan.deltas.size() > release.deltas.size()) return std::nullopt;
          plan.deltas.push_back(*step->second);
          v = index[step->second->result_sha256];
        }
        return plan;
      }
      frontier.push_back(base->second);
    }
  }
  return std::nullopt;
}

}  // namespace ds::repo
