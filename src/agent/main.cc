// deltastream-agent: the device-side updater (docs/PROTOCOL.md, "Agent").
//
//   deltastream-agent --config agent.json check [ARTIFACT]
//   deltastream-agent --config agent.json update [ARTIFACT] [--to VERSION]
//   deltastream-agent --config agent.json status [ARTIFACT]
//   deltastream-agent --config agent.json rollback ARTIFACT
//   deltastream-agent --config agent.json run [--once]   (fleet mode: docs/PROTOCOL.md)
//
// Without --config, --proxy, --public-key, --state-dir and --artifact NAME=PATH describe the same
// settings. Output: a progress bar on a terminal, JSON lines with --json (or when stderr is not a
// terminal, events only). The exit code is the error's stable code (src/common/status.h).
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "agent/agent.h"
#include "agent/run.h"
#include "common/fs.h"

namespace {

using ds::agent::Event;
using nlohmann::json;

std::string HumanBytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return buf;
}

class Output {
 public:
  Output(bool json_lines) : json_(json_lines), tty_(!json_lines && ::isatty(2)) {}

  void OnEvent(const Event& e) {
    if (json_) {
      json j = {{"event", e.type}, {"artifact", e.artifact}, {"t", e.elapsed}};
      if (!e.message.empty()) j["message"] = e.message;
      if (e.type == "progress" || e.type == "plan" || e.type == "carrier") {
        j["done"] = e.done;
        j["total"] = e.total;
        j["applied"] = e.applied;
        j["rate"] = e.rate;
        j["chunk_size"] = e.chunk_size;
        j["in_flight"] = e.in_flight;
        j["rtt"] = e.rtt;
        if (!e.carrier.empty()) j["carrier"] = e.carrier;
        if (e.carrier == "udp") j["repair_overhead"] = e.repair_overhead;
      }
      std::cout << j.dump() << std::endl;
      return;
    }
    if (e.type == "progress") {
      if (!tty_) return;
      const double frac = e.total ? static_cast<double>(e.done) / static_cast<double>(e.total) : 1;
      const int width = 30, filled = static_cast<int>(frac * width);
      const double eta = e.rate > 0 ? static_cast<double>(e.total - e.done) / e.rate : 0;
      std::fprintf(stderr, "\r[%s%s] %3.0f%% %s/%s %s/s ETA %.0fs chunk %s x%d   ",
                   std::string(filled, '#').c_str(), std::string(width - filled, ' ').c_str(),
                   frac * 100, HumanBytes(static_cast<double>(e.done)).c_str(),
                   HumanBytes(static_cast<double>(e.total)).c_str(), HumanBytes(e.rate).c_str(),
                   eta, HumanBytes(static_cast<double>(e.chunk_size)).c_str(), e.in_flight);
      std::fflush(stderr);
      bar_ = true;
      return;
    }
    if (bar_) {
      std::fprintf(stderr, "\n");
      bar_ = false;
    }
    std::fprintf(stderr, "%s: %s %s\n", e.artifact.c_str(), e.type.c_str(), e.message.c_str());
  }
  bool json_lines() const { return json_; }

 private:
  bool json_;
  bool tty_;
  bool bar_ = false;
};

int Fail(const ds::Status& s, const Output& out) {
  if (out.json_lines()) {
    std::cout << json{{"event", "error"},
                      {"code", static_cast<int>(s.code())},
                      {"name", std::string(ds::ErrorCodeName(s.code()))},
                      {"message", s.message()}}
                     .dump()
              << std::endl;
  }
  std::fprintf(stderr, "deltastream-agent: %s\n", s.ToString().c_str());
  return s.exit_code();
}

// `run`: SIGTERM/SIGINT stop the loop; a request that does not end within a grace period (a long
// poll, an update in progress) is abandoned by exiting, which is safe: events are journalled and
// the update resumes from its verified download on the next start.
int RunDeploy(ds::agent::AgentConfig config, bool once, Output& out) {
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);  // Before any thread starts: they inherit it.
  ds::agent::RunOptions options;
  options.once = once;
  options.log = [](const std::string& line) { std::cout << line << std::endl; };
  auto runner = ds::agent::DeployRunner::Create(std::move(config), options);
  if (!runner.ok()) return Fail(runner.status(), out);
  ds::agent::DeployRunner* r = runner->get();
  std::atomic<bool> finished{false};
  std::thread signals([r, &sigs, &finished] {
    int sig = 0;
    if (sigwait(&sigs, &sig) != 0 || finished) return;
    r->Stop();
    // An update gets 3 s to finish (and report); a long poll is simply abandoned.
    const int grace = r->updating() ? 30 : 3;
    for (int i = 0; i < grace && !finished; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (finished) return;
    r->Freeze();
    std::cout.flush();
    ::_exit(0);
  });
  const ds::Status s = r->Run();
  finished = true;
  ::pthread_kill(signals.native_handle(), SIGTERM);  // Ends the sigwait.
  signals.join();
  if (!s.ok()) return Fail(s, out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"deltastream-agent: verified delta updates for this device"};
  app.require_subcommand(1);
  std::string config_path, public_key, public_key_file, state_dir;
  std::vector<std::string> proxies, artifact_specs;
  bool json_lines = false;
  std::string fallback;
  app.add_option("--config", config_path, "JSON configuration file");
  app.add_option("--proxy", proxies, "Proxy base URL (repeatable; overrides the file)");
  app.add_option("--public-key", public_key, "Pinned master public key (hex)");
  app.add_option("--public-key-file", public_key_file, "File holding the pinned public key");
  app.add_option("--state-dir", state_dir, "State directory");
  app.add_option("--artifact", artifact_specs, "Managed artifact NAME=INSTALL_PATH (repeatable)");
  app.add_option("--fallback", fallback, "full, fail or defer (for --artifact entries)");
  app.add_flag("--json", json_lines, "JSON lines on stdout");
  std::string carrier;
  app.add_option("--carrier", carrier, "http or udp (overrides the file)");

  std::string artifact, to;
  CLI::App* check =
      app.add_subcommand("check", "Is a newer version signed, and what would it cost");
  check->add_option("name", artifact, "Artifact (default: all managed)");
  CLI::App* update = app.add_subcommand("update", "Update to the latest (or --to) version");
  update->add_option("name", artifact, "Artifact (default: all managed)");
  update->add_option("--to", to, "Target version");
  CLI::App* status = app.add_subcommand("status", "What is installed, kept and pending");
  status->add_option("name", artifact, "Artifact (default: all managed)");
  CLI::App* rollback = app.add_subcommand("rollback", "Restore the previous version");
  rollback->add_option("name", artifact, "Artifact")->required();
  std::string deploy_url, enroll_token, device_id;
  std::vector<std::string> labels;
  bool once = false;
  int poll_wait = -1;
  CLI::App* run = app.add_subcommand("run", "Take instructions from the deployment service");
  run->add_option("--deploy-url", deploy_url, "Deployment service base URL");
  run->add_option("--enroll-token", enroll_token, "Enrolment token (used once)");
  run->add_option("--device-id", device_id, "Device id (default: the host name)");
  run->add_option("--label", labels, "Device label K=V (repeatable)");
  run->add_flag("--once", once, "Process pending instructions, deliver the events, exit");
  run->add_option("--poll-wait", poll_wait, "Long-poll seconds (0..60)");
  CLI11_PARSE(app, argc, argv);

  Output out(json_lines);
  ds::agent::AgentConfig config;
  if (!config_path.empty()) {
    ds::Result<ds::agent::AgentConfig> c = ds::agent::LoadConfig(config_path);
    if (!c.ok()) return Fail(c.status(), out);
    config = std::move(*c);
  }
  if (!proxies.empty()) config.proxies = proxies;
  if (!carrier.empty()) {
    if (carrier != "http" && carrier != "udp") {
      return Fail(ds::Error(ds::ErrorCode::kInvalidArgument, "--carrier is http or udp"), out);
    }
    config.carrier = carrier;
  }
  if (!public_key_file.empty()) {
    ds::Result<ds::Bytes> k = ds::ReadFile(public_key_file, 4096);
    if (!k.ok()) return Fail(k.status(), out);
    public_key.assign(k->begin(), k->end());
  }
  if (!public_key.empty()) config.public_key_hex = public_key;
  if (!state_dir.empty()) config.state_dir = state_dir;
  for (const std::string& spec : artifact_specs) {
    const size_t eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || spec.size() == eq + 1 || spec[eq + 1] != '/') {
      return Fail(ds::Error(ds::ErrorCode::kInvalidArgument,
                            "--artifact wants NAME=/absolute/install/path, not " + spec),
                  out);
    }
    ds::agent::ManagedArtifact a;
    a.name = spec.substr(0, eq);
    a.install_path = spec.substr(eq + 1);
    if (!fallback.empty()) {
      ds::Result<ds::agent::FallbackPolicy> p = ds::agent::ParseFallbackPolicy(fallback);
      if (!p.ok()) return Fail(p.status(), out);
      a.fallback = *p;
    }
    config.artifacts.push_back(std::move(a));
  }
  if (config.proxies.empty() || config.public_key_hex.empty() || config.state_dir.empty() ||
      config.artifacts.empty()) {
    return Fail(ds::Error(ds::ErrorCode::kInvalidArgument,
                          "need proxies, a public key, a state directory and at least one "
                          "artifact (--config or the flags)"),
                out);
  }
  if (run->parsed()) {
    if (!deploy_url.empty()) config.deploy.url = deploy_url;
    if (!enroll_token.empty()) config.deploy.enrollment_token = enroll_token;
    if (!device_id.empty()) config.deploy.device_id = device_id;
    if (poll_wait >= 0) config.deploy.poll_wait_seconds = poll_wait;
    for (const std::string& l : labels) {
      const size_t eq = l.find('=');
      if (eq == std::string::npos || eq == 0) {
        return Fail(ds::Error(ds::ErrorCode::kInvalidArgument, "--label wants K=V, not " + l), out);
      }
      config.deploy.labels[l.substr(0, eq)] = l.substr(eq + 1);
    }
    return RunDeploy(std::move(config), once, out);
  }
  std::vector<std::string> names;
  if (!artifact.empty()) {
    names.push_back(artifact);
  } else {
    for (const auto& a : config.artifacts) names.push_back(a.name);
  }

  auto agent = ds::agent::Agent::Open(config, [&out](const Event& e) { out.OnEvent(e); });
  if (!agent.ok()) return Fail(agent.status(), out);
  int rc = 0;
  for (const std::string& name : names) {
    if (check->parsed()) {
      auto r = (*agent)->Check(name);
      if (!r.ok()) {
        rc = Fail(r.status(), out);
        continue;
      }
      if (out.json_lines()) {
        std::cout << json{{"event", "check"},
                          {"artifact", r->artifact},
                          {"installed_version", r->installed_version},
                          {"installed_sha256", r->installed_sha256},
                          {"latest", r->latest},
                          {"update_available", r->update_available},
                          {"route", r->route},
                          {"source", r->source},
                          {"delta_bytes", r->delta_bytes},
                          {"full_bytes", r->full_bytes}}
                         .dump()
                  << std::endl;
      } else {
        std::printf("%s: installed %s, latest %s: %s", r->artifact.c_str(),
                    r->installed_version.empty() ? "(unknown)" : r->installed_version.c_str(),
                    r->latest.c_str(), r->update_available ? "update available" : "up to date");
        if (r->update_available) {
          std::printf(
              " (%s: %s", r->route.c_str(),
              HumanBytes(static_cast<double>(r->route == "delta" ? r->delta_bytes : r->full_bytes))
                  .c_str());
          if (r->route == "delta") {
            std::printf(" instead of %s, %.1f%%",
                        HumanBytes(static_cast<double>(r->full_bytes)).c_str(),
                        100.0 * static_cast<double>(r->delta_bytes) /
                            static_cast<double>(std::max<uint64_t>(1, r->full_bytes)));
          }
          std::printf(")");
        }
        std::printf("\n");
      }
    } else if (update->parsed()) {
      auto r = (*agent)->Update(name, to.empty() ? std::nullopt : std::optional<std::string>(to));
      if (!r.ok()) {
        rc = Fail(r.status(), out);
        continue;
      }
      if (out.json_lines()) {
        std::cout << json{{"event", "result"},
                          {"artifact", r->artifact},
                          {"from", r->from_version},
                          {"to", r->to_version},
                          {"route", r->route},
                          {"bytes_fetched", r->bytes_fetched},
                          {"object_size", r->object_size},
                          {"resumed", r->resumed},
                          {"fallback_reason", r->fallback_reason}}
                         .dump()
                  << std::endl;
      } else {
        std::printf("%s: %s -> %s via %s, %s fetched%s\n", r->artifact.c_str(),
                    r->from_version.empty() ? "(none)" : r->from_version.c_str(),
                    r->to_version.c_str(), r->route.c_str(),
                    HumanBytes(static_cast<double>(r->bytes_fetched)).c_str(),
                    r->resumed ? " (resumed)" : "");
      }
    } else if (status->parsed()) {
      auto r = (*agent)->GetStatus(name);
      if (!r.ok()) {
        rc = Fail(r.status(), out);
        continue;
      }
      const json j = {{"artifact", r->artifact},
                      {"install_path", r->install_path},
                      {"installed_version", r->installed_version},
                      {"installed_sha256", r->installed_sha256},
                      {"previous_version", r->previous_version},
                      {"trusted_counter", r->trusted_counter},
                      {"pending", r->pending},
                      {"last_result", r->last_result}};
      std::cout << (out.json_lines() ? j.dump() : j.dump(2)) << std::endl;
    } else if (rollback->parsed()) {
      ds::Status s = (*agent)->Rollback(name);
      if (!s.ok()) rc = Fail(s, out);
    }
  }
  return rc;
}
