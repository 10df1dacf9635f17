// The delta stream end to end (docs/PROTOCOL.md): the real `deltastream serve` on 127.0.0.1
// (ephemeral port), two versions published with the real CLI, then a client that trusts only the
// pinned public key: signed metadata -> stream descriptor -> chunk map (checked against the signed
// chunk_map_sha256) -> chunks pulled in uneven groups from several threads, each verified, fed in
// order to the streaming applier, and the result checked against the signed hash. Also the
// "full" fallback, caching headers, error statuses, and a catalog from before chunk maps.
#include "stream/stream.h"

#include <SQLiteCpp/SQLiteCpp.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/fs.h"
#include "common/hash.h"
#include "delta/delta.h"
#include "net/http.h"
#include "repo/repo.h"
#include "support/process_util.h"
#include "support/test_util.h"

#ifndef DS_CLI_PATH
#error "DS_CLI_PATH must name the deltastream binary"
#endif

namespace ds {
namespace {

using json = nlohmann::json;
using testing::ReadFileOrDie;
using testing::TempDir;
using testing::WriteFileOrDie;

using testing::RunResult;

RunResult RunCli(const TempDir& dir, const std::vector<std::string>& args) {
  return testing::RunProgram(DS_CLI_PATH, dir, args);
}

// `deltastream serve` on an ephemeral port (support/process_util.h).
class ServerProcess : public testing::ServerProcess {
 public:
  ServerProcess(const std::string& data_dir, const std::string& log_path,
                std::vector<std::string> extra = {})
      : testing::ServerProcess(DS_CLI_PATH, data_dir, log_path, std::move(extra)) {}
};

class StreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    StartServer();
    // v2: v1 with scattered byte flips and 400 KB of new data, so the patch spans several
    // 64 KiB leaves while staying well below the compressed artifact.
    old_ = testing::RandomBytes(3 << 20, 11);
    new_ = old_;
    for (size_t i = 1234; i < new_.size(); i += 50000) new_[i] ^= 0x5A;
    const Bytes extra = testing::RandomBytes(400000, 12);
    new_.insert(new_.begin() + 1000000, extra.begin(), extra.end());
    WriteFileOrDie(dir_.Join("app-1"), old_);
    WriteFileOrDie(dir_.Join("app-2"), new_);
  }

  void StartServer() {
    server_ = std::make_unique<ServerProcess>(data_, dir_.Join("server.log"));
    ASSERT_FALSE(server_->url().empty());
  }

  void PublishBoth() {
    for (int k = 1; k <= 2; ++k) {
      RunResult r = RunCli(
          dir_, {"publish", "-q", "--artifact", "app", "--version",
                 "1." + std::to_string(k - 1) + ".0", dir_.Join("app-" + std::to_string(k)),
                 "--wait", "--server", server_->url(), "--token-file", data_ + "/admin.token"});
      ASSERT_EQ(r.exit_code, 0) << r.err;
    }
  }

  net::ClientResponse Get(const std::string& path,
                          const std::vector<std::pair<std::string, std::string>>& h = {}) {
    Result<net::ClientResponse> r = client_.Get(server_->url() + path, h);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : net::ClientResponse{};
  }

  // Verified "signed" object of the artifact's metadata.
  json SignedMetadata() {
    const net::ClientResponse m = Get("/v1/artifacts/app/metadata");
    EXPECT_EQ(m.status, 200);
    const Bytes key = ReadFileOrDie(data_ + "/keys/signing.pub");
    const std::string pub(key.begin(), key.begin() + 64);
    Result<std::string> canonical =
        repo::VerifyMetadata(m.body, pub, static_cast<int64_t>(std::time(nullptr)), 0);
    EXPECT_TRUE(canonical.ok()) << canonical.status().ToString();
    return canonical.ok() ? json::parse(*canonical) : json::object();
  }

  stream::StreamDescriptor Open(const std::string& query) {
    const net::ClientResponse r = Get("/v1/artifacts/app/stream" + query);
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.Header("cache-control"), "no-cache");
    Result<stream::StreamDescriptor> d = stream::ParseDescriptor(r.body);
    EXPECT_TRUE(d.ok()) << d.status().ToString() << " " << r.body;
    return d.ok() ? *d : stream::StreamDescriptor{};
  }

  // Fetches the chunk map and checks it against the signed root.
  stream::ChunkMap FetchChunkMap(const stream::StreamDescriptor& d,
                                 const std::string& signed_root) {
    EXPECT_EQ(d.chunk_map_sha256, signed_root);
    const net::ClientResponse r = Get(d.chunk_map_url);
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.Header("etag"), "\"" + signed_root + "\"");
    EXPECT_EQ(r.Header("cache-control"), "public, max-age=31536000, immutable");
    EXPECT_EQ(ToHex(Sha256::Of(AsBytes(r.body))), signed_root);
    Result<stream::ChunkMap> map = stream::ParseChunkMap(AsBytes(r.body));
    EXPECT_TRUE(map.ok()) << map.status().ToString();
    if (!map.ok()) return {};
    EXPECT_EQ(map->total_size(), d.size);
    EXPECT_EQ(map->leaf_size(), d.leaf_size);
    return std::move(map).value();
  }

  // Pulls every leaf in groups of |sizes| (cycled), all requests in flight at once from threads,
  // verifies each chunk and its headers, and returns the chunks in leaf order.
  std::vector<std::pair<uint64_t, Bytes>> PullAll(const stream::StreamDescriptor& d,
                                                  const stream::ChunkMap& map,
                                                  const std::vector<uint64_t>& sizes) {
    std::vector<std::pair<uint64_t, uint64_t>> groups;
    for (uint64_t first = 0, i = 0; first < map.leaf_count(); ++i) {
      const uint64_t last = std::min(map.leaf_count() - 1, first + sizes[i % sizes.size()] - 1);
      groups.emplace_back(first, last);
      first = last + 1;
    }
    std::vector<net::ClientResponse> responses(groups.size());
    std::vector<std::thread> threads;
    for (size_t g = 0; g < groups.size(); ++g) {
      threads.emplace_back([&, g] {
        const std::string url = server_->url() + d.chunks_url +
                                stream::ChunkRangeName(groups[g].first, groups[g].second);
        Result<net::ClientResponse> r = client_.Get(url);
        if (r.ok()) responses[g] = std::move(r).value();
      });
    }
    for (std::thread& t : threads) t.join();
    std::vector<std::pair<uint64_t, Bytes>> out;
    for (size_t g = 0; g < groups.size(); ++g) {
      const auto [first, last] = groups[g];
      const net::ClientResponse& r = responses[g];
      EXPECT_EQ(r.status, 200) << first << "-" << last << " " << r.body;
      EXPECT_EQ(r.Header("etag"),
                "\"" + d.sha256 + ":" + stream::ChunkRangeName(first, last) + "\"");
      EXPECT_EQ(r.Header("cache-control"), "public, max-age=31536000, immutable");
      EXPECT_EQ(r.Header("x-leaf-size"), std::to_string(d.leaf_size));
      Status s = map.VerifyChunk(first, AsBytes(r.body));
      EXPECT_TRUE(s.ok()) << s.ToString();
      out.emplace_back(first, Bytes(r.body.begin(), r.body.end()));
    }
    return out;
  }

  TempDir dir_;
  std::string data_ = dir_.Join("data");
  std::unique_ptr<ServerProcess> server_;
  net::Client client_;
  Bytes old_, new_;
};

const json* FindEntry(const json& list, const char* key, const std::string& value) {
  for (const json& e : list) {
    if (e.value(key, std::string()) == value) return &e;
  }
  return nullptr;
}

TEST_F(StreamTest, DeltaStreamFromOldVersionRebuildsNewVersion) {
  PublishBoth();
  const json s = SignedMetadata();
  const json* v2 = FindEntry(s["versions"], "version", "1.1.0");
  ASSERT_NE(v2, nullptr) << s.dump();
  const json* delta = FindEntry(s["deltas"], "to", "1.1.0");
  ASSERT_NE(delta, nullptr) << s.dump();
  ASSERT_TRUE((*delta)["chunk_map_sha256"].is_string());
  ASSERT_TRUE((*v2)["chunk_map_sha256"].is_string());

  const std::string old_sha = ToHex(Sha256::Of(old_));
  const stream::StreamDescriptor d = Open("?from=" + old_sha);
  ASSERT_EQ(d.kind, "delta");
  EXPECT_EQ(d.artifact, "app");
  EXPECT_EQ(d.to, "1.1.0");
  EXPECT_EQ(d.format, "dspf");
  EXPECT_EQ(d.base_sha256, old_sha);
  EXPECT_EQ(d.delta_id, (*delta)["id"].get<int64_t>());
  EXPECT_EQ(d.sha256, (*delta)["sha256"]);
  EXPECT_EQ(d.size, (*delta)["length"].get<uint64_t>());
  EXPECT_EQ(d.result_sha256, (*v2)["sha256"]);
  EXPECT_EQ(d.result_size, new_.size());
  EXPECT_EQ(d.leaf_size, 64u << 10);
  // Explicit to= gives the same answer.
  EXPECT_EQ(Open("?from=" + old_sha + "&to=1.1.0").sha256, d.sha256);

  const stream::ChunkMap map = FetchChunkMap(d, (*delta)["chunk_map_sha256"]);
  ASSERT_GE(map.leaf_count(), 4u) << "the patch should span several leaves";
  const auto chunks = PullAll(d, map, {1, 3, 2});

  // The applier consumes the chunks in order over the old bytes.
  delta::MemoryOldSource source(old_);
  delta::VectorSink sink;
  delta::PatchApplier applier(&source, &sink);
  uint64_t next = 0;
  for (const auto& [first, bytes] : chunks) {
    ASSERT_EQ(first, next);
    ASSERT_TRUE(applier.Write(bytes).ok());
    next = first + (bytes.size() + d.leaf_size - 1) / d.leaf_size;
  }
  ASSERT_EQ(next, map.leaf_count());
  Status fin = applier.Finish();
  ASSERT_TRUE(fin.ok()) << fin.ToString();
  EXPECT_TRUE(sink.bytes == new_);
  EXPECT_EQ(ToHex(Sha256::Of(sink.bytes)), (*v2)["sha256"]);

  // A cache revalidating a chunk gets 304.
  const std::string url = d.chunks_url + "0-0";
  const net::ClientResponse first = Get(url);
  const net::ClientResponse again =
      Get(url, {{"If-None-Match", std::string(first.Header("etag"))}});
  EXPECT_EQ(again.status, 304);
}

TEST_F(StreamTest, FullStreamWhenNoDeltaFromTheBase) {
  PublishBoth();
  const json s = SignedMetadata();
  const json* v2 = FindEntry(s["versions"], "version", "1.1.0");
  ASSERT_NE(v2, nullptr);
  for (const std::string& query :
       {"?from=" + std::string(64, 'e'), std::string(), std::string("?to=1.1.0"),
        // Already at the target: no delta from a version to itself.
        "?from=" + ToHex(Sha256::Of(new_))}) {
    const stream::StreamDescriptor d = Open(query);
    ASSERT_EQ(d.kind, "full") << query;
    EXPECT_EQ(d.sha256, (*v2)["sha256"]);
    EXPECT_EQ(d.size, new_.size());
    EXPECT_EQ(d.chunk_map_sha256, (*v2)["chunk_map_sha256"]);
  }
  const stream::StreamDescriptor d = Open("?from=" + std::string(64, 'e'));
  const stream::ChunkMap map = FetchChunkMap(d, (*v2)["chunk_map_sha256"]);
  EXPECT_EQ(map.leaf_count(), (new_.size() + 65535) / 65536);
  Bytes rebuilt;
  for (const auto& [first, bytes] : PullAll(d, map, {7, 5, 13})) {
    rebuilt.insert(rebuilt.end(), bytes.begin(), bytes.end());
  }
  EXPECT_TRUE(rebuilt == new_);

  // The old version, by to=, is streamable too.
  const json* v1 = FindEntry(s["versions"], "version", "1.0.0");
  ASSERT_NE(v1, nullptr);
  const stream::StreamDescriptor old = Open("?to=1.0.0");
  EXPECT_EQ(old.kind, "full");
  EXPECT_EQ(old.sha256, ToHex(Sha256::Of(old_)));
  EXPECT_EQ(old.chunk_map_sha256, (*v1)["chunk_map_sha256"]);
}

TEST_F(StreamTest, ErrorStatuses) {
  PublishBoth();
  const stream::StreamDescriptor d = Open("?from=" + ToHex(Sha256::Of(old_)));
  const uint64_t leaves = (d.size + d.leaf_size - 1) / d.leaf_size;
  struct Case {
    std::string path;
    int status;
  };
  const std::string chunks = d.chunks_url;
  const std::vector<Case> cases = {
      {"/v1/artifacts/app/stream?from=xyz", 400},
      {"/v1/artifacts/app/stream?from=" + std::string(64, 'A'), 400},
      {"/v1/artifacts/nope/stream", 404},
      {"/v1/artifacts/app/stream?to=9.9.9", 404},
      {"/v1/artifacts/-bad/stream", 400},
      {"/v1/chunkmaps/xyz", 400},
      {"/v1/chunkmaps/" + std::string(64, 'f'), 404},
      {chunks + "2-1", 400},
      {chunks + "0-4096", 400},
      {chunks + "a-b", 400},
      {chunks + "1", 400},
      {chunks + "-1-2", 400},
      {chunks + "0-" + std::to_string(leaves), 416},
      {chunks + std::to_string(leaves) + "-" + std::to_string(leaves), 416},
      {"/v1/chunks/" + std::string(64, 'f') + "/0-0", 404},
      {"/v1/chunks/xyz/0-0", 400},
  };
  for (const Case& c : cases) {
    const net::ClientResponse r = Get(c.path);
    EXPECT_EQ(r.status, c.status) << c.path << " " << r.body;
  }
  // The last leaf alone is fine, and a chunk of the full artifact by its own hash too.
  EXPECT_EQ(Get(chunks + std::to_string(leaves - 1) + "-" + std::to_string(leaves - 1)).status,
            200);
  EXPECT_EQ(Get("/v1/chunks/" + ToHex(Sha256::Of(old_)) + "/0-47").status, 200);  // 3 MiB.
}

// A catalog written before chunk maps (schema 1: no chunk_map_sha256 columns) is migrated when
// the server starts: every object gets its chunk map and the metadata is re-signed with them.
TEST_F(StreamTest, CatalogFromBeforeChunkMapsIsMigrated) {
  PublishBoth();
  const uint64_t counter_before = SignedMetadata()["counter"].get<uint64_t>();
  server_->Stop(SIGTERM);
  {
    SQLite::Database db(data_ + "/catalog.db", SQLite::OPEN_READWRITE);
    db.exec("DROP INDEX deltas_by_sha256");
    db.exec("ALTER TABLE versions DROP COLUMN chunk_map_sha256");
    db.exec("ALTER TABLE deltas DROP COLUMN chunk_map_sha256");
    db.exec("PRAGMA user_version = 1");
  }
  StartServer();
  const json s = SignedMetadata();
  EXPECT_GT(s["counter"].get<uint64_t>(), counter_before);
  for (const json& e : s["versions"]) EXPECT_TRUE(e.contains("chunk_map_sha256")) << e.dump();
  for (const json& e : s["deltas"]) EXPECT_TRUE(e.contains("chunk_map_sha256")) << e.dump();
  const json* delta = FindEntry(s["deltas"], "to", "1.1.0");
  ASSERT_NE(delta, nullptr);
  const stream::StreamDescriptor d = Open("?from=" + ToHex(Sha256::Of(old_)));
  ASSERT_EQ(d.kind, "delta");
  const stream::ChunkMap map = FetchChunkMap(d, (*delta)["chunk_map_sha256"]);
  EXPECT_EQ(PullAll(d, map, {2}).size(), (map.leaf_count() + 1) / 2);
  SQLite::Database db(data_ + "/catalog.db", SQLite::OPEN_READONLY);
  EXPECT_EQ(db.execAndGet("PRAGMA user_version").getInt(), 2);
}

}  // namespace
}  // namespace ds
