#include "cli/repo_commands.h"

#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli/deploy_commands.h"
#include "common/fs.h"
#include "common/hash.h"
#include "net/http.h"
#include "repo/master_api.h"
#include "repo/proxy.h"
#include "repo/repo.h"

namespace ds::cli {
namespace {

using json = nlohmann::json;

Status ParseHostPort(const std::string& listen, std::string* host, uint16_t* port) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return Error(ErrorCode::kInvalidArgument, "--listen is host:port, got '" + listen + "'");
  }
  *host = listen.substr(0, colon);
  if (host->size() > 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  const std::string p = listen.substr(colon + 1);
  char* end = nullptr;
  const unsigned long v = std::strtoul(p.c_str(), &end, 10);
  if (p.empty() || *end != '\0' || v > 65535) {
    return Error(ErrorCode::kInvalidArgument, "bad port in --listen '" + listen + "'");
  }
  *port = static_cast<uint16_t>(v);
  return Status::Ok();
}

// The listener and thread settings both roles share.
net::ServerOptions ServerOptionsFor(const ServeArgs& args, const std::string& host, uint16_t port) {
  net::ServerOptions so;
  so.host = host;
  so.port = port;
  so.worker_threads = args.worker_threads;
  so.io_threads = args.io_threads > 0
                      ? args.io_threads
                      : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  so.tls_cert_path = args.tls_cert;
  so.tls_key_path = args.tls_key;
  so.max_connections = static_cast<size_t>(args.max_connections);
  // Every connection is a descriptor: raise the soft limit as far as the hard one allows.
  rlimit nofile{};
  if (::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &nofile);
  }
  return so;
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  size_t i = 0;
  while (i < s.size() && s[i] == ' ') ++i;
  return s.substr(i);
}

Result<std::string> ResolveToken(const ClientArgs& a, bool required) {
  if (!a.token.empty()) return a.token;
  if (const char* env = std::getenv("DELTASTREAM_TOKEN"); env != nullptr && *env != '\0') {
    return std::string(env);
  }
  if (!a.token_file.empty()) {
    DS_ASSIGN_OR_RETURN(Bytes b, ReadFile(a.token_file, 4096));
    return Trim(std::string(b.begin(), b.end()));
  }
  if (required) {
    return Error(ErrorCode::kUnauthenticated,
                 "this command needs a token: --token, DELTASTREAM_TOKEN or --token-file "
                 "(serve writes an admin token to <data-dir>/admin.token)");
  }
  return std::string();
}

Result<std::unique_ptr<net::Client>> MakeClient(const ClientArgs& a, bool token_required) {
  net::ClientOptions o;
  DS_ASSIGN_OR_RETURN(o.bearer_token, ResolveToken(a, token_required));
  o.ca_file = a.ca_file;
  return std::make_unique<net::Client>(o);
}

std::string BaseUrl(const ClientArgs& a) {
  std::string s = a.server;
  while (!s.empty() && s.back() == '/') s.pop_back();
  return s;
}

// GET returning parsed JSON, or the server's error as a Status.
Result<json> GetJson(net::Client* client, const std::string& url) {
  DS_ASSIGN_OR_RETURN(net::ClientResponse r, client->Get(url));
  if (r.status != 200) return net::StatusFromResponse(r);
  json j = json::parse(r.body, nullptr, false);
  if (j.is_discarded()) return Error(ErrorCode::kProtocol, "server sent invalid JSON: " + url);
  return j;
}

std::string HumanBytes(double b) {
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

std::string Str(const json& j, const char* key) {
  if (!j.contains(key)) return "";
  const json& v = j[key];
  return v.is_string() ? v.get<std::string>() : v.dump();
}

Status WritePortFile(const ServeArgs& args, const std::string& where) {
  if (args.port_file.empty()) return Status::Ok();
  return WriteFileAtomic(args.port_file,
                         ByteView(reinterpret_cast<const uint8_t*>(where.data()), where.size()));
}

// The proxy role: no catalog, keys or tokens; the server and the pull-through cache only.
Status RunProxy(const ServeArgs& args, const std::string& host, uint16_t port,
                const sigset_t& stop) {
  if (args.upstream.empty()) {
    return Error(ErrorCode::kInvalidArgument, "--role proxy needs --upstream URL");
  }
  if (args.upstream.rfind("http://", 0) != 0 && args.upstream.rfind("https://", 0) != 0) {
    return Error(ErrorCode::kInvalidArgument,
                 "--upstream is an http:// or https:// URL, got '" + args.upstream + "'");
  }
  if (args.cache_max_mib == 0 || args.proxy_ttl_ms < 0) {
    return Error(ErrorCode::kInvalidArgument, "--cache-max-mib > 0 and --proxy-ttl-ms >= 0");
  }
  net::ServerOptions so = ServerOptionsFor(args, host, port);
  net::Server server(so);
  repo::ProxyOptions po;
  po.upstream = args.upstream;
  po.cache_dir = args.data_dir + "/cache";
  po.cache_max_bytes = args.cache_max_mib << 20;
  po.mutable_ttl_ms = args.proxy_ttl_ms;
  po.ondemand_workers = args.ondemand_workers;
  po.udp_port = args.udp_port;
  po.udp_host = host;
  po.ondemand_queue = args.ondemand_queue;
  po.ondemand_memory_budget = args.ondemand_memory_mib << 20;
  po.max_encoder_memory = args.max_encoder_memory_mib << 20;
  po.ondemand_max_bytes = args.ondemand_max_mib << 20;
  DS_ASSIGN_OR_RETURN(po.store, repo::ParseStorePolicy(args.store));
  po.keyframe_every = args.keyframe_every;
  DS_ASSIGN_OR_RETURN(std::shared_ptr<repo::Proxy> proxy, repo::RegisterProxyApi(&server, po));
  DS_RETURN_IF_ERROR(server.Start());
  const std::string where = host + ":" + std::to_string(server.port());
  std::fprintf(stderr,
               "deltastream: proxy serving %s://%s, upstream %s (cache %s, at most %" PRIu64
               " MiB; store %s; %d on-demand delta workers)\n",
               args.tls_cert.empty() ? "http" : "https", where.c_str(), args.upstream.c_str(),
               po.cache_dir.c_str(), args.cache_max_mib, repo::StorePolicyName(po.store),
               po.ondemand_workers);
  DS_RETURN_IF_ERROR(WritePortFile(args, where));
  int sig = 0;
  sigwait(&stop, &sig);
  std::fprintf(stderr, "deltastream: signal %d, stopping\n", sig);
  server.Stop();
  return Status::Ok();
}

}  // namespace

Status RunServe(const ServeArgs& args) {
  // Block the stop signals before any thread starts, so that only sigwait below sees them.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  std::string host;
  uint16_t port = 0;
  DS_RETURN_IF_ERROR(ParseHostPort(args.listen, &host, &port));
  if (args.tls_cert.empty() != args.tls_key.empty()) {
    return Error(ErrorCode::kInvalidArgument, "--tls-cert and --tls-key go together");
  }
  if (args.role == "proxy") return RunProxy(args, host, port, stop);
  if (args.role == "deploy") return RunDeployRole(args, host, port, stop);
  if (args.role != "master") {
    return Error(ErrorCode::kInvalidArgument,
                 "--role is master, proxy or deploy, got '" + args.role + "'");
  }
  if (!args.repo.empty()) return Error(ErrorCode::kInvalidArgument, "--repo is for --role deploy");
  if (!args.upstream.empty()) {
    return Error(ErrorCode::kInvalidArgument, "--upstream is for --role proxy");
  }
  if (args.store != "both") {
    return Error(ErrorCode::kInvalidArgument, "--store is for --role proxy");
  }
  repo::RepoOptions ro;
  ro.data_dir = args.data_dir;
  ro.delta_history = args.delta_history;
  ro.job_workers = args.job_workers;
  ro.job_memory_budget = args.job_memory_mib << 20;
  ro.worth_ratio = args.worth_ratio;
  ro.max_encoder_memory = args.max_encoder_memory_mib << 20;
  ro.metadata_ttl_seconds = args.metadata_ttl_days * 24 * 3600;
  ro.signing_key_path = args.signing_key;
  DS_ASSIGN_OR_RETURN(std::unique_ptr<repo::Repository> repository, repo::Repository::Open(ro));

  if (!repository->HasTokens()) {
    DS_ASSIGN_OR_RETURN(std::string token,
                        repository->CreateToken("admin", repo::TokenScope::kAdmin));
    const std::string path = args.data_dir + "/admin.token";
    DS_RETURN_IF_ERROR(WriteFileAtomic(
        path, ByteView(reinterpret_cast<const uint8_t*>(token.data()), token.size()), 0600));
    std::fprintf(stderr, "deltastream: first start: admin token written to %s\n", path.c_str());
  }

  net::ServerOptions so = ServerOptionsFor(args, host, port);
  so.max_stream_body_bytes = args.max_artifact_mib << 20;
  net::Server server(so);
  repo::MasterApiOptions mo;
  mo.require_read_token = args.require_read_token;
  mo.max_artifact_bytes = args.max_artifact_mib << 20;
  repo::RegisterMasterApi(&server, repository.get(), mo);
  // The deployment service, on by default in the single-process setup (docs/DEPLOY.md). Declared
  // after the server: destroyed (stopped) first.
  std::unique_ptr<deploy::Deploy> deploy_service;
  if (!args.no_deploy) {
    DS_ASSIGN_OR_RETURN(deploy_service,
                        OpenDeployService(args, [r = repository.get()](std::string_view token) {
                          return r->CheckToken(token, repo::TokenScope::kAdmin).status();
                        }));
    deploy_service->Register(server);
  }
  DS_RETURN_IF_ERROR(server.Start());
  if (deploy_service && args.deploy_proxy.empty()) {
    deploy_service->SetRepoUrl(SelfUrl(args, host, server.port()));
  }

  const std::string where = host + ":" + std::to_string(server.port());
  std::fprintf(stderr,
               "deltastream: master serving %s://%s (data %s)\n"
               "deltastream: metadata signing key id %s, public key %s\n",
               args.tls_cert.empty() ? "http" : "https", where.c_str(), args.data_dir.c_str(),
               repository->key_id().c_str(), repository->public_key_hex().c_str());
  DS_RETURN_IF_ERROR(WritePortFile(args, where));
  int sig = 0;
  sigwait(&stop, &sig);
  std::fprintf(stderr, "deltastream: signal %d, stopping\n", sig);
  if (deploy_service) deploy_service->Stop();
  server.Stop();
  repository->Shutdown();
  return Status::Ok();
}

Status RunKeygen(const KeygenArgs& args) {
  const std::string secret = args.prefix + ".key", pub = args.prefix + ".pub";
  DS_RETURN_IF_ERROR(repo::GenerateKeyPair(secret, pub));
  std::printf("secret key %s (keep it on the master only)\npublic key %s (pin it on devices)\n",
              secret.c_str(), pub.c_str());
  return Status::Ok();
}

Status RunPublish(const PublishArgs& args) {
  DS_RETURN_IF_ERROR(repo::Repository::ValidateArtifactName(args.artifact));
  DS_RETURN_IF_ERROR(repo::Repository::ValidateVersion(args.version));
  DS_ASSIGN_OR_RETURN(std::unique_ptr<net::Client> client, MakeClient(args, true));
  DS_ASSIGN_OR_RETURN(uint64_t size, FileSize(args.file));
  // The declared SHA-256 lets the server refuse a corrupted upload before it is stored.
  std::string sha;
  {
    DS_ASSIGN_OR_RETURN(auto map, MappedFile::Open(args.file));
    sha = ToHex(Sha256::Of(map->bytes()));
  }
  std::vector<std::pair<std::string, std::string>> headers = {{"X-Content-SHA256", sha}};
  std::string labels, depends;
  for (const std::string& l : args.labels) labels += (labels.empty() ? "" : ",") + l;
  for (const std::string& d : args.depends) depends += (depends.empty() ? "" : ",") + d;
  if (!labels.empty()) headers.emplace_back("X-Deltastream-Labels", labels);
  if (!depends.empty()) headers.emplace_back("X-Deltastream-Depends", depends);

  const bool tty = !args.quiet && isatty(STDERR_FILENO);
  const auto t0 = std::chrono::steady_clock::now();
  net::Progress progress;
  if (tty) {
    progress = [t0](uint64_t done, uint64_t total) {
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const int width = 30;
      const int fill = total ? static_cast<int>(width * done / total) : 0;
      std::fprintf(stderr, "\r[%.*s%*s] %s / %s  %.1f MB/s ", fill,
                   "##############################", width - fill, "",
                   HumanBytes(static_cast<double>(done)).c_str(),
                   HumanBytes(static_cast<double>(total)).c_str(),
                   s > 0 ? static_cast<double>(done) / s / 1e6 : 0.0);
    };
  }
  const std::string url = BaseUrl(args) + "/v1/artifacts/" + net::UrlEncode(args.artifact) +
                          "/versions/" + net::UrlEncode(args.version);
  DS_ASSIGN_OR_RETURN(net::ClientResponse r,
                      client->UploadFile("PUT", url, args.file, headers, progress));
  if (tty) std::fprintf(stderr, "\n");
  if (r.status != 200 && r.status != 201) return net::StatusFromResponse(r);
  json j = json::parse(r.body, nullptr, false);
  if (j.is_discarded()) return Error(ErrorCode::kProtocol, "server sent invalid JSON");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!args.quiet) {
    std::printf("%s %s %s: %s, sha256 %s, %.2f s; deltas queued: %zu\n",
                r.status == 201 ? "published" : "already published", args.artifact.c_str(),
                args.version.c_str(), HumanBytes(static_cast<double>(size)).c_str(), sha.c_str(),
                secs, j.value("queued_deltas", json::array()).size());
  }
  if (!args.wait) return Status::Ok();
  // Follow the queued jobs until none is queued or running.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(args.wait_seconds);
  for (const json& id : j.value("queued_deltas", json::array())) {
    for (;;) {
      DS_ASSIGN_OR_RETURN(json d, GetJson(client.get(), BaseUrl(args) + "/v1/jobs/" + id.dump()));
      const std::string st = Str(d, "status");
      if (st != "queued" && st != "running") {
        if (!args.quiet) {
          std::printf("delta %s -> %s: %s, %s, %.2f s\n", Str(d, "from").c_str(),
                      Str(d, "to").c_str(), st.c_str(), HumanBytes(d.value("size", 0.0)).c_str(),
                      d.value("gen_seconds", 0.0));
        }
        break;
      }
      if (std::chrono::steady_clock::now() > deadline) {
        return Error(ErrorCode::kUnavailable, "delta jobs still running after --wait-seconds");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }
  return Status::Ok();
}

Status RunVersions(const VersionsArgs& args) {
  DS_ASSIGN_OR_RETURN(std::unique_ptr<net::Client> client, MakeClient(args, false));
  if (args.artifact.empty()) {
    DS_ASSIGN_OR_RETURN(json j, GetJson(client.get(), BaseUrl(args) + "/v1/artifacts"));
    if (args.json) {
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      for (const json& a : j.value("artifacts", json::array())) {
        std::printf("%s\n", a.get<std::string>().c_str());
      }
    }
    return Status::Ok();
  }
  DS_ASSIGN_OR_RETURN(json j,
                      GetJson(client.get(), BaseUrl(args) + "/v1/artifacts/" +
                                                net::UrlEncode(args.artifact) + "/versions"));
  if (args.json) {
    std::printf("%s\n", j.dump(2).c_str());
    return Status::Ok();
  }
  std::printf("%-20s %14s  %-64s  %s\n", "version", "size", "sha256", "publisher");
  for (const json& v : j.value("versions", json::array())) {
    std::printf("%-20s %14" PRIu64 "  %-64s  %s\n", Str(v, "version").c_str(),
                v.value("size", uint64_t{0}), Str(v, "sha256").c_str(),
                Str(v, "publisher").c_str());
  }
  return Status::Ok();
}

Status RunJobs(const JobsArgs& args) {
  DS_ASSIGN_OR_RETURN(std::unique_ptr<net::Client> client, MakeClient(args, false));
  DS_ASSIGN_OR_RETURN(
      json j,
      GetJson(client.get(), BaseUrl(args) + "/v1/jobs?limit=" + std::to_string(args.limit)));
  if (args.json) {
    std::printf("%s\n", j.dump(2).c_str());
    return Status::Ok();
  }
  std::printf("%6s  %-16s %-12s %-12s %-10s %12s %9s\n", "id", "artifact", "from", "to", "status",
              "size", "seconds");
  for (const json& d : j.value("jobs", json::array())) {
    std::printf("%6" PRId64 "  %-16s %-12s %-12s %-10s %12" PRIu64 " %9.2f\n",
                d.value("id", int64_t{0}), Str(d, "artifact").c_str(), Str(d, "from").c_str(),
                Str(d, "to").c_str(), Str(d, "status").c_str(), d.value("size", uint64_t{0}),
                d.value("gen_seconds", 0.0));
  }
  return Status::Ok();
}

Status RunMetadata(const MetadataArgs& args) {
  if (args.public_key_file.empty()) {
    return Error(ErrorCode::kInvalidArgument, "--public-key is required (the pinned key)");
  }
  DS_ASSIGN_OR_RETURN(Bytes key_bytes, ReadFile(args.public_key_file, 4096));
  const std::string key = Trim(std::string(key_bytes.begin(), key_bytes.end()));
  DS_ASSIGN_OR_RETURN(std::unique_ptr<net::Client> client, MakeClient(args, false));
  DS_ASSIGN_OR_RETURN(
      net::ClientResponse r,
      client->Get(BaseUrl(args) + "/v1/artifacts/" + net::UrlEncode(args.artifact) + "/metadata"));
  if (r.status != 200) return net::StatusFromResponse(r);
  const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  DS_ASSIGN_OR_RETURN(std::string signed_text,
                      repo::VerifyMetadata(r.body, key, now, args.min_counter));
  const json j = json::parse(signed_text, nullptr, false);
  std::printf("%s\n", j.is_discarded() ? signed_text.c_str() : j.dump(2).c_str());
  std::fprintf(stderr, "signature verified\n");
  return Status::Ok();
}

}  // namespace ds::cli
