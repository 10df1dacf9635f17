#include "repo/master_api.h"

#include <charconv>
#include <cinttypes>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "repo/stream_api.h"

namespace ds::repo {
namespace {

using json = nlohmann::json;
using net::Request;
using net::Response;

json VersionJson(const VersionInfo& v) {
  return json{{"artifact", v.artifact},
              {"version", v.version},
              {"sha256", v.sha256},
              {"size", v.size},
              {"compressed_size", v.compressed_size},
              {"labels", v.labels},
              {"dependencies", v.dependencies},
              {"publisher", v.publisher},
              {"created_at", v.created_at},
              {"seq", v.seq},
              {"url", "/v1/blobs/" + v.sha256}};
}

json DeltaJson(const DeltaInfo& d) {
  json j{{"id", d.id},
         {"artifact", d.artifact},
         {"from", d.from_version},
         {"to", d.to_version},
         {"base_sha256", d.base_sha256},
         {"result_sha256", d.result_sha256},
         {"format", d.format},
         {"status", DeltaStatusName(d.status)},
         {"size", d.size},
         {"gen_seconds", d.gen_seconds},
         {"attempts", d.attempts},
         {"created_at", d.created_at},
         {"updated_at", d.updated_at}};
  if (d.status == DeltaStatus::kReady) {
    j["sha256"] = d.sha256;
    j["url"] = "/v1/deltas/" + std::to_string(d.id) + "/data";
  }
  if (!d.error.empty()) j["error"] = d.error;
  return j;
}

Response JsonOk(const json& j, int status = 200) {
  return Response::Json(status, j.dump()).With("Cache-Control", "no-cache");
}

// "Authorization: Bearer <token>" → the token, or empty.
std::string BearerToken(const Request& req) {
  std::string_view h = req.Header("authorization");
  constexpr std::string_view kPrefix = "Bearer ";
  if (h.size() <= kPrefix.size()) return {};
  for (size_t i = 0; i < kPrefix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(h[i])) !=
        std::tolower(static_cast<unsigned char>(kPrefix[i]))) {
      return {};
    }
  }
  return std::string(h.substr(kPrefix.size()));
}

Result<std::string> Authorize(Repository* repo, const Request& req, TokenScope scope) {
  const std::string token = BearerToken(req);
  if (token.empty()) {
    return Error(ErrorCode::kUnauthenticated, "this call needs an Authorization: Bearer token");
  }
  return repo->CheckToken(token, scope);
}

Result<int64_t> ParseId(const std::string& s) {
  int64_t v = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || v <= 0) {
    return Error(ErrorCode::kInvalidArgument, "bad id '" + s + "'");
  }
  return v;
}

// Splits "a,b , c" into trimmed non-empty items.
std::vector<std::string> SplitList(std::string_view s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find(',', start);
    if (end == std::string_view::npos) end = s.size();
    std::string_view item = s.substr(start, end - start);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    if (!item.empty()) out.emplace_back(item);
    start = end + 1;
  }
  return out;
}

bool IsHex64(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

Response BlobResponse(const BlobRef& blob) {
  Response r;
  r.status = 200;
  r.file = net::FileBody{blob.path, 0, blob.size};
  r.With("Content-Type", "application/octet-stream")
      .With("ETag", "\"" + blob.sha256 + "\"")
      .With("Cache-Control", "public, max-age=31536000, immutable")
      .With("X-Content-SHA256", blob.sha256);
  return r;
}

// Feeds a streamed publish body into an Upload.
class UploadSink : public net::BodySink {
 public:
  explicit UploadSink(std::unique_ptr<Upload> upload) : upload_(std::move(upload)) {}
  Status Write(ByteView data) override { return upload_->Write(data); }
  Upload* upload() { return upload_.get(); }

 private:
  std::unique_ptr<Upload> upload_;
};

struct Api {
  Repository* repo;
  MasterApiOptions options;
  net::Server* server;

  // Wraps a read handler with the optional read-token check and error mapping.
  net::Handler Read(std::function<Result<Response>(Request&)> fn) const {
    return [this, fn = std::move(fn)](Request& req) -> Response {
      if (options.require_read_token) {
        if (Result<std::string> who = Authorize(repo, req, TokenScope::kRead); !who.ok()) {
          return Response::FromStatus(who.status());
        }
      }
      Result<Response> r = fn(req);
      return r.ok() ? std::move(*r) : Response::FromStatus(r.status());
    };
  }
};

}  // namespace

void RegisterMasterApi(net::Server* server, Repository* repo, const MasterApiOptions& options) {
  // Lives as long as the routes (the server keeps copies of the lambdas that point to it).
  auto api = std::make_shared<Api>(Api{repo, options, server});
  const Api* a = api.get();

  server->Route("GET", "/v1/health", [api](Request&) {
    return JsonOk(json{{"status", "ok"},
                       {"server", api->options.server_version},
                       {"key_id", api->repo->key_id()},
                       {"public_key", api->repo->public_key_hex()}});
  });

  server->Route("GET", "/metrics", [api](Request&) {
    const Metrics m = api->repo->GetMetrics();
    std::string out;
    auto gauge = [&](const char* name, const char* help, const char* type, double v) {
      char line[256];
      std::snprintf(line, sizeof(line), "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name,
                    type, name, v);
      out += line;
    };
    gauge("ds_repo_artifacts", "Artifacts in the catalog.", "gauge", m.artifacts);
    gauge("ds_repo_versions", "Versions in the catalog.", "gauge", m.versions);
    gauge("ds_repo_blob_bytes", "Bytes of stored blobs.", "gauge", m.blobs_bytes);
    gauge("ds_repo_deltas_ready", "Deltas ready to serve.", "gauge", m.deltas_ready);
    gauge("ds_repo_deltas_not_worth", "Deltas not smaller than the compressed artifact.", "gauge",
          m.deltas_not_worth);
    gauge("ds_repo_deltas_failed", "Delta jobs that failed for good.", "gauge", m.deltas_failed);
    gauge("ds_repo_jobs_queued", "Delta jobs waiting.", "gauge", m.jobs_queued);
    gauge("ds_repo_jobs_running", "Delta jobs running.", "gauge", m.jobs_running);
    gauge("ds_repo_published_total", "Versions published since start.", "counter",
          m.published_total);
    gauge("ds_repo_publish_bytes_total", "Bytes published since start.", "counter",
          m.publish_bytes_total);
    gauge("ds_repo_job_seconds_total", "Seconds spent in delta jobs since start.", "counter",
          m.job_seconds_total);
    out += api->server->MetricsText();
    return Response::Text(200, std::move(out), "text/plain; version=0.0.4");
  });

  server->Route("GET", "/v1/artifacts", a->Read([api](Request&) -> Result<Response> {
    DS_ASSIGN_OR_RETURN(std::vector<std::string> names, api->repo->ListArtifacts());
    return JsonOk(json{{"artifacts", names}});
  }));

  server->Route(
      "GET", "/v1/artifacts/{artifact}/versions", a->Read([api](Request& req) -> Result<Response> {
        const std::string& artifact = req.params["artifact"];
        DS_ASSIGN_OR_RETURN(std::vector<VersionInfo> versions, api->repo->ListVersions(artifact));
        json list = json::array();
        for (const VersionInfo& v : versions) list.push_back(VersionJson(v));
        return JsonOk(json{{"artifact", artifact}, {"versions", list}});
      }));

  server->Route("GET", "/v1/artifacts/{artifact}/latest",
                a->Read([api](Request& req) -> Result<Response> {
                  DS_ASSIGN_OR_RETURN(VersionInfo v, api->repo->Latest(req.params["artifact"]));
                  return JsonOk(VersionJson(v));
                }));

  server->Route("GET", "/v1/artifacts/{artifact}/versions/{version}",
                a->Read([api](Request& req) -> Result<Response> {
                  DS_ASSIGN_OR_RETURN(VersionInfo v, api->repo->GetVersion(req.params["artifact"],
                                                                           req.params["version"]));
                  return JsonOk(VersionJson(v));
                }));

  server->Route("GET", "/v1/artifacts/{artifact}/metadata",
                a->Read([api](Request& req) -> Result<Response> {
                  DS_ASSIGN_OR_RETURN(std::string envelope,
                                      api->repo->SignedMetadata(req.params["artifact"]));
                  return Response::Json(200, std::move(envelope)).With("Cache-Control", "no-cache");
                }));

  server->Route(
      "GET", "/v1/artifacts/{artifact}/deltas", a->Read([api](Request& req) -> Result<Response> {
        DS_ASSIGN_OR_RETURN(std::vector<DeltaInfo> deltas,
                            api->repo->ListDeltas(req.params["artifact"], req.QueryParam("from"),
                                                  req.QueryParam("to")));
        json list = json::array();
        for (const DeltaInfo& d : deltas) list.push_back(DeltaJson(d));
        return JsonOk(json{{"artifact", req.params["artifact"]}, {"deltas", list}});
      }));

  server->Route("GET", "/v1/deltas/{id}", a->Read([api](Request& req) -> Result<Response> {
    DS_ASSIGN_OR_RETURN(int64_t id, ParseId(req.params["id"]));
    DS_ASSIGN_OR_RETURN(DeltaInfo d, api->repo->GetDelta(id));
    return JsonOk(DeltaJson(d));
  }));

  server->Route("GET", "/v1/deltas/{id}/data", a->Read([api](Request& req) -> Result<Response> {
    DS_ASSIGN_OR_RETURN(int64_t id, ParseId(req.params["id"]));
    DS_ASSIGN_OR_RETURN(DeltaInfo d, api->repo->GetDelta(id));
    if (d.status != DeltaStatus::kReady) {
      return Error(ErrorCode::kNotFound, "delta " + std::to_string(id) + " is " +
                                             DeltaStatusName(d.status) + ", not ready");
    }
    DS_ASSIGN_OR_RETURN(BlobRef blob, api->repo->OpenBlob(d.sha256));
    return BlobResponse(blob);
  }));

  server->Route("GET", "/v1/blobs/{sha256}", a->Read([api](Request& req) -> Result<Response> {
    const std::string& sha = req.params["sha256"];
    if (!IsHex64(sha)) {
      return Error(ErrorCode::kInvalidArgument, "a blob is named by 64 lower-case hex digits");
    }
    DS_ASSIGN_OR_RETURN(BlobRef blob, api->repo->OpenBlob(sha));
    return BlobResponse(blob);
  }));

  server->Route("GET", "/v1/jobs", a->Read([api](Request& req) -> Result<Response> {
    size_t limit = 100;
    if (std::optional<std::string> l = req.QueryParam("limit")) {
      DS_ASSIGN_OR_RETURN(int64_t v, ParseId(*l));
      limit = static_cast<size_t>(std::min<int64_t>(v, 10000));
    }
    DS_ASSIGN_OR_RETURN(std::vector<DeltaInfo> jobs, api->repo->ListJobs(limit));
    json list = json::array();
    for (const DeltaInfo& d : jobs) list.push_back(DeltaJson(d));
    return JsonOk(json{{"jobs", list}});
  }));

  server->Route("GET", "/v1/jobs/{id}", a->Read([api](Request& req) -> Result<Response> {
    DS_ASSIGN_OR_RETURN(int64_t id, ParseId(req.params["id"]));
    DS_ASSIGN_OR_RETURN(DeltaInfo d, api->repo->GetDelta(id));
    return JsonOk(DeltaJson(d));
  }));

  server->Route("POST", "/v1/tokens", [api](Request& req) -> Response {
    if (Result<std::string> who = Authorize(api->repo, req, TokenScope::kAdmin); !who.ok()) {
      return Response::FromStatus(who.status());
    }
    const json body = json::parse(req.body, nullptr, false);
    if (body.is_discarded() || !body.is_object() || !body.contains("name") ||
        !body["name"].is_string()) {
      return Response::FromStatus(
          Error(ErrorCode::kInvalidArgument, R"(body must be {"name": "...", "scope": "..."})"));
    }
    const std::string scope_name = body.value("scope", std::string("publish"));
    TokenScope scope;
    if (scope_name == "read") {
      scope = TokenScope::kRead;
    } else if (scope_name == "publish") {
      scope = TokenScope::kPublish;
    } else if (scope_name == "admin") {
      scope = TokenScope::kAdmin;
    } else {
      return Response::FromStatus(
          Error(ErrorCode::kInvalidArgument, "scope is one of read, publish, admin"));
    }
    Result<std::string> token = api->repo->CreateToken(body["name"].get<std::string>(), scope);
    if (!token.ok()) return Response::FromStatus(token.status());
    return JsonOk(json{{"name", body["name"]}, {"scope", scope_name}, {"token", *token}}, 201);
  });

  // Publish: the body is the artifact, streamed into the blob store.
  net::StreamHandler publish;
  publish.begin = [api](Request& req) -> Result<std::unique_ptr<net::BodySink>> {
    DS_ASSIGN_OR_RETURN(std::string who, Authorize(api->repo, req, TokenScope::kPublish));
    (void)who;
    DS_RETURN_IF_ERROR(Repository::ValidateArtifactName(req.params["artifact"]));
    DS_RETURN_IF_ERROR(Repository::ValidateVersion(req.params["version"]));
    std::optional<std::string> sha;
    if (std::string_view h = req.Header("x-content-sha256"); !h.empty()) {
      if (!IsHex64(h)) {
        return Error(ErrorCode::kInvalidArgument, "X-Content-SHA256 must be 64 lower-case hex");
      }
      sha = std::string(h);
    }
    std::optional<uint64_t> size;
    if (std::string_view h = req.Header("content-length"); !h.empty()) {
      uint64_t v = 0;
      const auto [p, ec] = std::from_chars(h.data(), h.data() + h.size(), v);
      if (ec != std::errc() || p != h.data() + h.size()) {
        return Error(ErrorCode::kInvalidArgument, "bad Content-Length");
      }
      if (v > api->options.max_artifact_bytes) {
        return Error(ErrorCode::kTooLarge, "artifact larger than the server's limit of " +
                                               std::to_string(api->options.max_artifact_bytes) +
                                               " bytes");
      }
      size = v;
    }
    DS_ASSIGN_OR_RETURN(std::unique_ptr<Upload> upload, api->repo->BeginUpload(sha, size));
    return std::unique_ptr<net::BodySink>(std::make_unique<UploadSink>(std::move(upload)));
  };
  publish.finish = [api](Request& req, std::unique_ptr<net::BodySink> sink,
                         Status body) -> Response {
    if (!body.ok()) return Response::FromStatus(body);
    auto* upload = static_cast<UploadSink*>(sink.get())->upload();
    Result<std::string> sha = upload->Commit();
    if (!sha.ok()) return Response::FromStatus(sha.status());
    PublishRequest pr;
    pr.artifact = req.params["artifact"];
    pr.version = req.params["version"];
    Result<std::string> who = Authorize(api->repo, req, TokenScope::kPublish);
    pr.publisher = who.ok() ? *who : "";
    for (const std::string& kv : SplitList(req.Header("x-deltastream-labels"))) {
      const size_t eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) {
        return Response::FromStatus(
            Error(ErrorCode::kInvalidArgument, "X-Deltastream-Labels is k=v[,k=v...]"));
      }
      pr.labels[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    pr.dependencies = SplitList(req.Header("x-deltastream-depends"));
    Result<PublishResult> r = api->repo->Publish(pr, *sha);
    if (!r.ok()) return Response::FromStatus(r.status());
    json j = VersionJson(r->version);
    j["created"] = r->created;
    j["queued_deltas"] = r->queued_deltas;
    return JsonOk(j, r->created ? 201 : 200)
        .With("Location", "/v1/artifacts/" + net::UrlEncode(pr.artifact) + "/versions/" +
                              net::UrlEncode(pr.version));
  };
  server->StreamRoute("PUT", "/v1/artifacts/{artifact}/versions/{version}", std::move(publish));

  RegisterStreamApi(server, repo, options);
}

}  // namespace ds::repo
