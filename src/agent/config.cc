// The agent's JSON configuration file (docs/PROTOCOL.md, "Agent configuration").
#include <nlohmann/json.hpp>
#include <string>

#include "agent/agent.h"
#include "common/fs.h"

namespace ds::agent {
namespace {

using nlohmann::json;

constexpr uint64_t kMaxConfigBytes = 1 << 20;

Status Bad(const std::string& what) {
  return Error(ErrorCode::kInvalidArgument, "agent configuration: " + what);
}

}  // namespace

const char* FallbackPolicyName(FallbackPolicy p) {
  switch (p) {
    case FallbackPolicy::kFull:
      return "full";
    case FallbackPolicy::kFail:
      return "fail";
    case FallbackPolicy::kDefer:
      return "defer";
  }
  return "full";
}

Result<FallbackPolicy> ParseFallbackPolicy(std::string_view s) {
  if (s == "full") return FallbackPolicy::kFull;
  if (s == "fail") return FallbackPolicy::kFail;
  if (s == "defer") return FallbackPolicy::kDefer;
  return Bad("fallback must be full, fail or defer, not \"" + std::string(s) + "\"");
}

Status ValidateDeployConfig(const DeployConfig& d) {
  if (d.url.rfind("http://", 0) != 0 && d.url.rfind("https://", 0) != 0) {
    return Bad("deploy url \"" + d.url + "\" is not an http(s) URL");
  }
  if (d.poll_wait_seconds < 0 || d.poll_wait_seconds > 60) {
    return Bad("deploy poll_wait_seconds must be within 0..60");
  }
  if (d.heartbeat_interval_ms <= 0 || d.progress_interval_seconds < 0) {
    return Bad("deploy heartbeat_interval_ms must be > 0 and progress_interval_seconds >= 0");
  }
  if (d.backoff_initial_ms <= 0 || d.backoff_max_ms < d.backoff_initial_ms) {
    return Bad("deploy backoff: 0 < backoff_initial_ms <= backoff_max_ms");
  }
  for (const auto& [k, v] : d.labels) {
    if (k.empty()) return Bad("deploy labels: an empty label name");
  }
  return Status::Ok();
}

const ManagedArtifact* AgentConfig::Find(std::string_view name) const {
  for (const ManagedArtifact& a : artifacts) {
    if (a.name == name) return &a;
  }
  return nullptr;
}

Result<AgentConfig> LoadConfig(const std::string& path) {
  DS_ASSIGN_OR_RETURN(Bytes text, ReadFile(path, kMaxConfigBytes));
  json doc;
  try {
    doc = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    return Bad(path + " is not JSON: " + e.what());
  }
  if (!doc.is_object()) return Bad(path + " is not a JSON object");
  AgentConfig c;
  // Reads an optional field of the JSON type T into *out; a mistyped one is an error.
  Status problem;
  auto get = [&](const json& obj, const char* name, auto* out, bool required) {
    if (!problem.ok()) return;
    auto it = obj.find(name);
    if (it == obj.end()) {
      if (required) problem = Bad(std::string("\"") + name + "\" is required");
      return;
    }
    try {
      *out = it->get<std::remove_pointer_t<decltype(out)>>();
    } catch (const json::exception&) {
      problem = Bad(std::string("\"") + name + "\" has the wrong type");
    }
  };
  get(doc, "proxies", &c.proxies, true);
  get(doc, "public_key", &c.public_key_hex, true);
  get(doc, "state_dir", &c.state_dir, true);
  get(doc, "token", &c.token, false);
  get(doc, "ca_file", &c.ca_file, false);
  get(doc, "connect_timeout_ms", &c.connect_timeout_ms, false);
  get(doc, "stall_timeout_ms", &c.stall_timeout_ms, false);
  get(doc, "retry_budget", &c.retry_budget, false);
  get(doc, "backoff_initial_ms", &c.backoff_initial_ms, false);
  get(doc, "backoff_max_ms", &c.backoff_max_ms, false);
  get(doc, "carrier", &c.carrier, false);
  uint64_t max_chunk_kib = c.controller.max_chunk >> 10;
  int max_in_flight = c.controller.max_in_flight;
  get(doc, "max_chunk_kib", &max_chunk_kib, false);
  get(doc, "max_in_flight", &max_in_flight, false);
  uint64_t max_encoder_memory_mib = 0;
  get(doc, "max_encoder_memory_mib", &max_encoder_memory_mib, false);
  DS_RETURN_IF_ERROR(problem);
  if (max_encoder_memory_mib > (1u << 20))
    return Bad("\"max_encoder_memory_mib\" is at most 1048576");
  c.max_encoder_memory = max_encoder_memory_mib << 20;
  c.controller.max_chunk = max_chunk_kib << 10;
  c.controller.max_in_flight = max_in_flight;
  if (c.carrier != "http" && c.carrier != "udp") return Bad("\"carrier\" is \"http\" or \"udp\"");
  if (c.proxies.empty()) return Bad("\"proxies\" lists no URL");
  for (const std::string& p : c.proxies) {
    if (p.rfind("http://", 0) != 0 && p.rfind("https://", 0) != 0) {
      return Bad("proxy \"" + p + "\" is not an http(s) URL");
    }
  }
  if (c.retry_budget < 0 || c.backoff_initial_ms <= 0 || c.backoff_max_ms < c.backoff_initial_ms) {
    return Bad("retry_budget must be >= 0 and 0 < backoff_initial_ms <= backoff_max_ms");
  }
  auto arts = doc.find("artifacts");
  if (arts == doc.end() || !arts->is_object() || arts->empty()) {
    return Bad("\"artifacts\" must map at least one artifact name to its settings");
  }
  for (const auto& [name, settings] : arts->items()) {
    if (!settings.is_object()) return Bad("artifact \"" + name + "\" settings are not an object");
    ManagedArtifact a;
    a.name = name;
    std::string fallback = "full";
    get(settings, "install_path", &a.install_path, true);
    get(settings, "health_check", &a.health_check, false);
    get(settings, "health_timeout_ms", &a.health_timeout_ms, false);
    get(settings, "fallback", &fallback, false);
    DS_RETURN_IF_ERROR(problem.WithContext("artifact \"" + name + "\""));
    if (a.install_path.empty() || a.install_path[0] != '/') {
      return Bad("artifact \"" + name + "\": install_path must be absolute");
    }
    DS_ASSIGN_OR_RETURN(a.fallback, ParseFallbackPolicy(fallback));
    c.artifacts.push_back(std::move(a));
  }
  auto deploy = doc.find("deploy");
  if (deploy != doc.end()) {
    if (!deploy->is_object()) return Bad("\"deploy\" is not an object");
    DeployConfig& d = c.deploy;
    get(*deploy, "url", &d.url, true);
    get(*deploy, "enrollment_token", &d.enrollment_token, false);
    get(*deploy, "device_id", &d.device_id, false);
    get(*deploy, "labels", &d.labels, false);
    get(*deploy, "poll_wait_seconds", &d.poll_wait_seconds, false);
    get(*deploy, "heartbeat_interval_ms", &d.heartbeat_interval_ms, false);
    get(*deploy, "progress_interval_seconds", &d.progress_interval_seconds, false);
    get(*deploy, "backoff_initial_ms", &d.backoff_initial_ms, false);
    get(*deploy, "backoff_max_ms", &d.backoff_max_ms, false);
    DS_RETURN_IF_ERROR(problem.WithContext("\"deploy\""));
    DS_RETURN_IF_ERROR(ValidateDeployConfig(d));
  }
  DS_RETURN_IF_ERROR(ValidateControllerConfig(c.controller).WithContext("agent configuration"));
  return c;
}

}  // namespace ds::agent
