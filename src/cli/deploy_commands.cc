#include "cli/deploy_commands.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <CLI/CLI.hpp>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/fs.h"
#include "common/hash.h"
#include "net/http.h"

namespace ds::cli {
namespace {

using json = nlohmann::json;

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  size_t i = 0;
  while (i < s.size() && s[i] == ' ') ++i;
  return s.substr(i);
}

ByteView AsView(const std::string& s) {
  return ByteView(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

// The token in |path|, or a new random one written there (0600) when the file does not exist.
Result<std::string> ReadOrMakeToken(const std::string& path, const char* what) {
  Result<Bytes> b = ReadFile(path, 4096);
  if (b.ok()) {
    std::string t = Trim(std::string(b->begin(), b->end()));
    if (t.empty()) return Error(ErrorCode::kInvalidArgument, path + " is empty");
    return t;
  }
  if (b.status().code() != ErrorCode::kNotFound) return b.status();
  uint8_t raw[32];
  if (RAND_bytes(raw, sizeof(raw)) != 1) return Error(ErrorCode::kInternal, "no randomness");
  const std::string token = ToHex(ByteView(raw, sizeof(raw)));
  DS_RETURN_IF_ERROR(WriteFileAtomic(path, AsView(token), 0600));
  std::fprintf(stderr, "deltastream: first start: %s token written to %s\n", what, path.c_str());
  return token;
}

Status MakeDirs(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Error(ErrorCode::kIoError, "cannot create " + dir + ": " + ec.message());
  return Status::Ok();
}

void WaitForSignal(const sigset_t& stop) {
  int sig = 0;
  sigwait(&stop, &sig);
  std::fprintf(stderr, "deltastream: signal %d, stopping\n", sig);
}

}  // namespace

std::string SelfUrl(const ServeArgs& args, const std::string& host, uint16_t port) {
  std::string h = host;
  if (h.empty() || h == "0.0.0.0") h = "127.0.0.1";
  if (h == "::") h = "::1";
  if (h.find(':') != std::string::npos) h = "[" + h + "]";
  return std::string(args.tls_cert.empty() ? "http" : "https") + "://" + h + ":" +
         std::to_string(port);
}

Result<std::unique_ptr<deploy::Deploy>> OpenDeployService(
    const ServeArgs& args, std::function<Status(std::string_view)> check_admin) {
  deploy::DeployOptions o;
  o.data_dir = args.data_dir;
  DS_RETURN_IF_ERROR(MakeDirs(args.data_dir));
  if (!args.enroll_token_file.empty()) {
    DS_ASSIGN_OR_RETURN(Bytes b, ReadFile(args.enroll_token_file, 4096));
    o.enrollment_token = Trim(std::string(b.begin(), b.end()));
    if (o.enrollment_token.empty()) {
      return Error(ErrorCode::kInvalidArgument, "--enroll-token-file is empty");
    }
  } else {
    DS_ASSIGN_OR_RETURN(o.enrollment_token,
                        ReadOrMakeToken(args.data_dir + "/enroll.token", "enrolment"));
  }
  o.check_admin = std::move(check_admin);
  o.repo_url = args.deploy_proxy;
  o.repo_ca_file = args.tls_cert;
  o.prewarm_timeout_ms = args.deploy_prewarm_timeout_s * 1000;
  return deploy::Deploy::Open(std::move(o));
}

Status RunDeployRole(const ServeArgs& args, const std::string& host, uint16_t port,
                     const sigset_t& stop) {
  if (args.repo.empty() && args.deploy_proxy.empty()) {
    return Error(ErrorCode::kInvalidArgument, "--role deploy needs --repo URL (master or proxy)");
  }
  DS_RETURN_IF_ERROR(MakeDirs(args.data_dir));
  DS_ASSIGN_OR_RETURN(const std::string admin,
                      ReadOrMakeToken(args.data_dir + "/admin.token", "admin"));
  const std::string admin_hash = ToHex(Sha256::Of(AsView(admin)));
  ServeArgs a = args;
  if (a.deploy_proxy.empty()) a.deploy_proxy = a.repo;
  DS_ASSIGN_OR_RETURN(std::unique_ptr<deploy::Deploy> service,
                      OpenDeployService(a, [admin_hash](std::string_view token) -> Status {
                        const std::string h = ToHex(Sha256::Of(ByteView(
                            reinterpret_cast<const uint8_t*>(token.data()), token.size())));
                        if (CRYPTO_memcmp(h.data(), admin_hash.data(), h.size()) != 0) {
                          return Error(ErrorCode::kUnauthenticated, "unknown admin token");
                        }
                        return Status::Ok();
                      }));
  net::ServerOptions so;
  so.host = host;
  so.port = port;
  so.worker_threads = args.worker_threads;
  so.io_threads = args.io_threads > 0 ? args.io_threads : 2;
  so.tls_cert_path = args.tls_cert;
  so.tls_key_path = args.tls_key;
  net::Server server(so);
  service->Register(server);
  DS_RETURN_IF_ERROR(server.Start());
  const std::string where = host + ":" + std::to_string(server.port());
  std::fprintf(stderr, "deltastream: deployment service serving %s, repository %s\n",
               SelfUrl(args, host, server.port()).c_str(), a.deploy_proxy.c_str());
  if (!args.port_file.empty()) DS_RETURN_IF_ERROR(WriteFileAtomic(args.port_file, AsView(where)));
  WaitForSignal(stop);
  service->Stop();
  server.Stop();
  return Status::Ok();
}

// ---- deltastream deploy ... ----

namespace {

Result<std::string> ResolveToken(const ClientArgs& a) {
  if (!a.token.empty()) return a.token;
  if (const char* env = std::getenv("DELTASTREAM_TOKEN"); env != nullptr && *env != '\0') {
    return std::string(env);
  }
  if (!a.token_file.empty()) {
    DS_ASSIGN_OR_RETURN(Bytes b, ReadFile(a.token_file, 4096));
    return Trim(std::string(b.begin(), b.end()));
  }
  return Error(ErrorCode::kUnauthenticated,
               "deploy commands need the admin token: --token, DELTASTREAM_TOKEN or --token-file "
               "(serve writes it to <data-dir>/admin.token)");
}

Result<json> Call(const DeployCliArgs& a, const std::string& method, const std::string& path,
                  const std::string& body) {
  net::ClientOptions o;
  DS_ASSIGN_OR_RETURN(o.bearer_token, ResolveToken(a));
  o.ca_file = a.ca_file;
  net::Client client(o);
  std::string base = a.server;
  while (!base.empty() && base.back() == '/') base.pop_back();
  Result<net::ClientResponse> r =
      method == "GET"
          ? client.Get(base + path)
          : client.Send(method, base + path, body, {{"Content-Type", "application/json"}});
  if (!r.ok()) return r.status();
  if (r->status / 100 != 2) return net::StatusFromResponse(*r);
  json j = json::parse(r->body, nullptr, false);
  if (j.is_discarded()) return Error(ErrorCode::kProtocol, "the server sent invalid JSON");
  return j;
}

std::string Human(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u ? "%.1f %s" : "%.0f %s", b, units[u]);
  return buf;
}

void PrintSummary(const json& d) {
  const json c = d.value("counts", json::object());
  std::printf("%-8s %-20s %-14s %-10s %5" PRId64 "/%-5" PRId64 " installed %4" PRId64
              " failed  saved %s\n",
              d.value("id", "").c_str(), d.value("artifact", "").c_str(),
              d.value("version", "").c_str(), d.value("state", "").c_str(),
              c.value("installed", int64_t{0}), c.value("devices", int64_t{0}),
              c.value("failed", int64_t{0}), Human(d.value("bytes_saved_total", 0.0)).c_str());
}

void PrintDeployment(const json& d) {
  PrintSummary(d);
  if (!d.value("reason", "").empty())
    std::printf("  reason: %s\n", d["reason"].get<std::string>().c_str());
  for (const json& w : d.value("waves", json::array())) {
    std::printf("  wave %d  %-10s %3" PRId64 " devices: %3" PRId64 " installed %3" PRId64
                " in progress %3" PRId64 " failed; expected %s (deltas) vs %s (full)\n",
                w.value("index", 0), w.value("state", "").c_str(), w.value("devices", int64_t{0}),
                w.value("installed", int64_t{0}), w.value("in_progress", int64_t{0}),
                w.value("failed", int64_t{0}), Human(w.value("expected_delta_bytes", 0.0)).c_str(),
                Human(w.value("expected_full_bytes", 0.0)).c_str());
  }
  for (const json& v : d.value("devices", json::array())) {
    std::printf("    %-20s wave %d  %-12s %-8s %12s  error %" PRId64 "\n",
                v.value("device_id", "").c_str(), v.value("wave", 0), v.value("state", "").c_str(),
                v.value("result", "").c_str(), Human(v.value("bytes", 0.0)).c_str(),
                v.value("error_code", int64_t{0}));
  }
}

}  // namespace

CLI::App* AddDeployCommand(CLI::App& app, DeployCliArgs* a) {
  auto* dp = app.add_subcommand("deploy",
                                "Fleet deployments: create, list, show, pause, resume, "
                                "cancel, retry (deployment service)");
  dp->add_option("action", a->action, "create|list|show|pause|resume|cancel|retry")
      ->required()
      ->check(CLI::IsMember({"create", "list", "show", "pause", "resume", "cancel", "retry"}));
  dp->add_option("id", a->id, "Deployment id (show, pause, resume, cancel, retry)");
  dp->add_option("--artifact", a->artifact, "create: artifact");
  dp->add_option("--version", a->version, "create: target version");
  dp->add_option("--label", a->labels, "create: select devices with label k=v (repeatable, ANDed)");
  dp->add_option("--device", a->devices, "create: select this device id (repeatable)");
  dp->add_option("--waves", a->waves,
                 "create: wave sizes and cumulative percentages, e.g. 1,50%,100%")
      ->capture_default_str();
  dp->add_option("--success-threshold", a->success_threshold,
                 "create: fraction of a wave installed before the next starts")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  dp->add_option("--failure-threshold", a->failure_threshold,
                 "create: fraction of a wave failed above which the rollout halts")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  dp->add_flag("--no-prefer-delta", a->no_prefer_delta, "create: devices download full artifacts");
  dp->add_option("--carrier", a->carrier, "create: http, udp or auto")
      ->check(CLI::IsMember({"http", "udp", "auto"}))
      ->capture_default_str();
  dp->add_option("--fallback", a->fallback, "create: when the delta fails: full, fail or defer")
      ->check(CLI::IsMember({"full", "fail", "defer"}))
      ->capture_default_str();
  dp->add_flag("--json", a->json, "Print the server's JSON");
  dp->add_option("--server", a->server, "Server URL")->capture_default_str();
  dp->add_option("--token", a->token, "Admin token (or DELTASTREAM_TOKEN, or --token-file)");
  dp->add_option("--token-file", a->token_file, "File holding the admin token");
  dp->add_option("--ca-file", a->ca_file, "CA certificate for an HTTPS server");
  return dp;
}

Status RunDeploy(const DeployCliArgs& a) {
  json out;
  if (a.action == "create") {
    if (a.artifact.empty() || a.version.empty()) {
      return Error(ErrorCode::kInvalidArgument, "deploy create needs --artifact and --version");
    }
    if (a.labels.empty() && a.devices.empty()) {
      return Error(ErrorCode::kInvalidArgument, "deploy create needs --label k=v and/or --device");
    }
    json sel = json::object();
    if (!a.labels.empty()) {
      json labels = json::object();
      for (const std::string& l : a.labels) {
        const size_t eq = l.find('=');
        if (eq == std::string::npos || eq == 0) {
          return Error(ErrorCode::kInvalidArgument, "--label is k=v, got '" + l + "'");
        }
        labels[l.substr(0, eq)] = l.substr(eq + 1);
      }
      sel["labels"] = labels;
    }
    if (!a.devices.empty()) sel["devices"] = a.devices;
    json waves = json::array();
    size_t start = 0;
    while (start <= a.waves.size()) {
      size_t comma = a.waves.find(',', start);
      if (comma == std::string::npos) comma = a.waves.size();
      const std::string w = Trim(a.waves.substr(start, comma - start));
      if (w.empty()) return Error(ErrorCode::kInvalidArgument, "--waves: an empty wave");
      if (w.back() == '%') {
        waves.push_back(w);
      } else {
        char* end = nullptr;
        const long long n = std::strtoll(w.c_str(), &end, 10);
        if (*end != '\0' || n <= 0) {
          return Error(ErrorCode::kInvalidArgument, "--waves: '" + w + "' is no count or N%");
        }
        waves.push_back(n);
      }
      start = comma + 1;
    }
    const json body = {
        {"artifact", a.artifact},
        {"version", a.version},
        {"selector", sel},
        {"waves", waves},
        {"success_threshold", a.success_threshold},
        {"failure_threshold", a.failure_threshold},
        {"policy",
         {{"prefer_delta", !a.no_prefer_delta}, {"carrier", a.carrier}, {"fallback", a.fallback}}}};
    DS_ASSIGN_OR_RETURN(out, Call(a, "POST", "/v1/deployments", body.dump()));
  } else if (a.action == "list") {
    DS_ASSIGN_OR_RETURN(out, Call(a, "GET", "/v1/deployments", ""));
    if (!a.json) {
      for (const json& d : out.value("deployments", json::array())) PrintSummary(d);
      return Status::Ok();
    }
  } else {
    if (a.id.empty())
      return Error(ErrorCode::kInvalidArgument, "deploy " + a.action + " needs an id");
    const std::string path = "/v1/deployments/" + net::UrlEncode(a.id);
    if (a.action == "show") {
      DS_ASSIGN_OR_RETURN(out, Call(a, "GET", path, ""));
    } else {
      DS_ASSIGN_OR_RETURN(out, Call(a, "POST", path + "/" + a.action, ""));
    }
  }
  if (a.json) {
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    PrintDeployment(out);
  }
  return Status::Ok();
}

}  // namespace ds::cli
