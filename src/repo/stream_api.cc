#include "repo/stream_api.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/fs.h"
#include "repo/blob_store.h"
#include "stream/stream.h"

namespace ds::repo {
namespace {

using net::Request;
using net::Response;

// "Authorization: Bearer <token>" → the token, or empty.
std::string BearerToken(const Request& req) {
  const std::string_view h = req.Header("authorization");
  constexpr std::string_view kPrefix = "bearer ";
  if (h.size() <= kPrefix.size()) return {};
  for (size_t i = 0; i < kPrefix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(h[i])) != kPrefix[i]) return {};
  }
  return std::string(h.substr(kPrefix.size()));
}

// Wraps a read handler with the optional read-token check and error mapping.
net::Handler Read(Repository* repo, bool require_token,
                  std::function<Result<Response>(Request&)> fn) {
  return [repo, require_token, fn = std::move(fn)](Request& req) -> Response {
    if (require_token) {
      const std::string token = BearerToken(req);
      if (token.empty()) {
        return Response::FromStatus(
            Error(ErrorCode::kUnauthenticated, "this call needs an Authorization: Bearer token"));
      }
      if (Result<std::string> who = repo->CheckToken(token, TokenScope::kRead); !who.ok()) {
        return Response::FromStatus(who.status());
      }
    }
    Result<Response> r = fn(req);
    return r.ok() ? std::move(*r) : Response::FromStatus(r.status());
  };
}

Status CheckHex(const std::string& s, std::string_view what) {
  if (!IsSha256Hex(s)) {
    return Error(ErrorCode::kInvalidArgument,
                 std::string(what) + " must be 64 lower-case hex digits");
  }
  return Status::Ok();
}

// Reads and validates the header of the stored chunk map |chunk_map_sha256|.
Result<stream::ChunkMapHeader> ReadChunkMapHeader(Repository* repo,
                                                  const std::string& chunk_map_sha256) {
  DS_ASSIGN_OR_RETURN(BlobRef blob, repo->OpenBlob(chunk_map_sha256));
  DS_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> file, RandomAccessFile::Open(blob.path));
  std::array<uint8_t, stream::kChunkMapHeaderSize> buf{};
  if (file->size() < buf.size()) {
    return Error(ErrorCode::kInternal, "stored chunk map " + chunk_map_sha256 + " is truncated");
  }
  DS_RETURN_IF_ERROR(file->ReadAt(0, buf));
  Result<stream::ChunkMapHeader> h = stream::ParseChunkMapHeader(buf);
  if (!h.ok()) {
    return Error(ErrorCode::kInternal,
                 "stored chunk map " + chunk_map_sha256 + ": " + h.status().message());
  }
  return h;
}

// "<first>-<last>", both decimal without sign or leading '+'.
Result<Response> Descriptor(Repository* repo, Request& req) {
  const std::string& artifact = req.params["artifact"];
  std::optional<std::string> from = req.QueryParam("from");
  if (from) DS_RETURN_IF_ERROR(CheckHex(*from, "from"));
  std::optional<std::string> to = req.QueryParam("to");
  VersionInfo version;
  if (to) {
    DS_ASSIGN_OR_RETURN(version, repo->GetVersion(artifact, *to));
  } else {
    DS_ASSIGN_OR_RETURN(version, repo->Latest(artifact));
  }
  stream::StreamDescriptor d;
  d.artifact = artifact;
  d.to = version.version;
  d.result_sha256 = version.sha256;
  d.result_size = version.size;
  d.kind = "full";
  d.size = version.size;
  d.sha256 = version.sha256;
  d.chunk_map_sha256 = version.chunk_map_sha256;
  if (from) {
    DS_ASSIGN_OR_RETURN(std::vector<DeltaInfo> deltas,
                        repo->ListDeltas(artifact, std::nullopt, version.version));
    const DeltaInfo* best = nullptr;
    for (const DeltaInfo& delta : deltas) {
      if (delta.status != DeltaStatus::kReady || delta.base_sha256 != *from ||
          delta.chunk_map_sha256.empty()) {
        continue;
      }
      if (best == nullptr || delta.size < best->size) best = &delta;
    }
    if (best != nullptr) {
      d.kind = "delta";
      d.format = best->format;
      d.delta_id = best->id;
      d.base_sha256 = best->base_sha256;
      d.size = best->size;
      d.sha256 = best->sha256;
      d.chunk_map_sha256 = best->chunk_map_sha256;
    }
  }
  if (d.chunk_map_sha256.empty()) {
    return Error(ErrorCode::kUnavailable, "no chunk map for " + d.sha256 + " yet");
  }
  DS_ASSIGN_OR_RETURN(stream::ChunkMapHeader h, ReadChunkMapHeader(repo, d.chunk_map_sha256));
  if (h.total_size != d.size) {
    return Error(ErrorCode::kInternal,
                 "chunk map " + d.chunk_map_sha256 + " is not of " + d.sha256);
  }
  d.leaf_size = h.leaf_size;
  d.chunk_map_url = "/v1/chunkmaps/" + d.chunk_map_sha256;
  d.chunks_url = "/v1/chunks/" + d.sha256 + "/";
  return Response::Json(200, stream::DescriptorToJson(d)).With("Cache-Control", "no-cache");
}

Result<Response> ChunkMapBlob(Repository* repo, Request& req) {
  const std::string& sha = req.params["sha256"];
  DS_RETURN_IF_ERROR(CheckHex(sha, "a chunk map name"));
  DS_ASSIGN_OR_RETURN(BlobRef blob, repo->OpenBlob(sha));
  Response r;
  r.file = net::FileBody{blob.path, 0, blob.size};
  r.With("Content-Type", "application/octet-stream")
      .With("ETag", "\"" + sha + "\"")
      .With("Cache-Control", kImmutable)
      .With("X-Content-SHA256", sha);
  return r;
}

Result<Response> Chunk(Repository* repo, Request& req) {
  const std::string& sha = req.params["sha256"];
  DS_RETURN_IF_ERROR(CheckHex(sha, "an object name"));
  DS_ASSIGN_OR_RETURN(auto range, stream::ParseChunkRangeName(req.params["range"]));
  const auto [first, last] = range;
  if (last < first) {
    return Error(ErrorCode::kInvalidArgument,
                 "chunk " + stream::ChunkRangeName(first, last) + " ends before it starts");
  }
  if (last - first >= kMaxLeavesPerChunk) {
    return Error(ErrorCode::kInvalidArgument,
                 "a chunk is at most " + std::to_string(kMaxLeavesPerChunk) + " leaves");
  }
  DS_ASSIGN_OR_RETURN(std::string chunk_map_sha, repo->ChunkMapOf(sha));
  DS_ASSIGN_OR_RETURN(stream::ChunkMapHeader h, ReadChunkMapHeader(repo, chunk_map_sha));
  if (last >= h.count) {
    Response r = Response::FromStatus(
        Error(ErrorCode::kInvalidArgument, "chunk " + stream::ChunkRangeName(first, last) +
                                               " is past the object's last leaf (" +
                                               std::to_string(h.count) + " leaves)"));
    r.status = 416;
    r.With("X-Leaf-Count", std::to_string(h.count));
    return r;
  }
  DS_ASSIGN_OR_RETURN(BlobRef blob, repo->OpenBlob(sha));
  if (blob.size != h.total_size) {
    return Error(ErrorCode::kInternal, "chunk map " + chunk_map_sha + " is not of " + sha);
  }
  const uint64_t offset = first * h.leaf_size;
  const uint64_t end = std::min(h.total_size, (last + 1) * h.leaf_size);
  Response r;
  r.file = net::FileBody{blob.path, offset, end - offset};
  r.With("Content-Type", "application/octet-stream")
      .With("ETag", "\"" + sha + ":" + stream::ChunkRangeName(first, last) + "\"")
      .With("Cache-Control", kImmutable)
      .With("X-Leaf-Size", std::to_string(h.leaf_size))
      .With("X-Chunk-Map-SHA256", chunk_map_sha);
  return r;
}

}  // namespace

void RegisterStreamApi(net::Server* server, Repository* repo, const MasterApiOptions& options) {
  const bool token = options.require_read_token;
  server->Route("GET", "/v1/artifacts/{artifact}/stream",
                Read(repo, token, [repo](Request& req) { return Descriptor(repo, req); }));
  server->Route("GET", "/v1/chunkmaps/{sha256}",
                Read(repo, token, [repo](Request& req) { return ChunkMapBlob(repo, req); }));
  server->Route("GET", "/v1/chunks/{sha256}/{range}",
                Read(repo, token, [repo](Request& req) { return Chunk(repo, req); }));
}

}  // namespace ds::repo
