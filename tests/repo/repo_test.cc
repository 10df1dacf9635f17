// Repository: publish, blob store, delta jobs, ordering, names, tokens.
#include "repo/repo.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <set>
#include <string>
#include <vector>

#include "common/fs.h"
#include "common/hash.h"
#include "delta/delta.h"
#include "repo_test_util.h"
#include "support/test_util.h"

namespace ds::repo {
namespace {

using ::ds::testing::CodeOf;
using ::ds::testing::TempDir;
using testing::BinaryImage;
using testing::EditImage;
using testing::FilesUnder;
using testing::OpenOrDie;
using testing::PublishBytes;
using testing::Store;
using testing::TestOptions;

std::vector<std::string> VersionNames(const std::vector<VersionInfo>& versions) {
  std::vector<std::string> out;
  for (const VersionInfo& v : versions) out.push_back(v.version);
  return out;
}

TEST(RepoTest, PublishThreeVersionsMakesDeltasThatApply) {
  TempDir dir;
  auto repo = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(repo, nullptr);
  const Bytes v1 = BinaryImage(1 << 20, 1);
  const Bytes v2 = EditImage(v1, 2);
  const Bytes v3 = EditImage(v2, 3);

  Result<PublishResult> p1 = PublishBytes(repo.get(), "app", "1.0.0", v1);
  ASSERT_TRUE(p1.ok()) << p1.status().ToString();
  EXPECT_TRUE(p1->created);
  EXPECT_TRUE(p1->queued_deltas.empty());
  EXPECT_EQ(p1->version.seq, 1u);
  EXPECT_EQ(p1->version.size, v1.size());
  EXPECT_EQ(p1->version.sha256, ToHex(Sha256::Of(v1)));
  Result<PublishResult> p2 = PublishBytes(repo.get(), "app", "1.1.0", v2);
  ASSERT_TRUE(p2.ok()) << p2.status().ToString();
  EXPECT_EQ(p2->queued_deltas.size(), 1u);
  Result<PublishResult> p3 = PublishBytes(repo.get(), "app", "1.2.0", v3);
  ASSERT_TRUE(p3.ok()) << p3.status().ToString();
  EXPECT_EQ(p3->queued_deltas.size(), 2u);
  EXPECT_EQ(p3->version.seq, 3u);

  Result<std::vector<DeltaInfo>> queued = repo->ListDeltas("app", std::nullopt, std::nullopt);
  ASSERT_TRUE(queued.ok());
  ASSERT_EQ(queued->size(), 3u);
  for (const DeltaInfo& d : *queued) EXPECT_EQ(d.status, DeltaStatus::kQueued);
  EXPECT_EQ(repo->GetMetrics().jobs_queued, 3u);
  EXPECT_FALSE(repo->WaitForJobs(10));  // No workers: nothing moves until RunJobsOnce.

  ASSERT_TRUE(repo->RunJobsOnce().ok());
  EXPECT_TRUE(repo->WaitForJobs(0));

  const std::map<std::string, const Bytes*> bytes = {
      {"1.0.0", &v1}, {"1.1.0", &v2}, {"1.2.0", &v3}};
  Result<std::vector<DeltaInfo>> deltas = repo->ListDeltas("app", std::nullopt, std::nullopt);
  ASSERT_TRUE(deltas.ok());
  ASSERT_EQ(deltas->size(), 3u);
  std::set<std::pair<std::string, std::string>> pairs;
  for (const DeltaInfo& d : *deltas) {
    pairs.insert({d.from_version, d.to_version});
    EXPECT_EQ(d.status, DeltaStatus::kReady) << d.error;
    EXPECT_EQ(d.attempts, 1);
    EXPECT_EQ(d.format, "dspf");
    EXPECT_EQ(d.base_sha256, ToHex(Sha256::Of(*bytes.at(d.from_version))));
    EXPECT_EQ(d.result_sha256, ToHex(Sha256::Of(*bytes.at(d.to_version))));
    Result<BlobRef> blob = repo->OpenBlob(d.sha256);
    ASSERT_TRUE(blob.ok()) << blob.status().ToString();
    EXPECT_EQ(blob->size, d.size);
    Result<Bytes> patch = ReadFile(blob->path);
    ASSERT_TRUE(patch.ok());
    EXPECT_EQ(ToHex(Sha256::Of(*patch)), d.sha256);
    Result<Bytes> rebuilt = delta::ApplyPatch(*bytes.at(d.from_version), *patch);
    ASSERT_TRUE(rebuilt.ok()) << rebuilt.status().ToString();
    EXPECT_TRUE(*rebuilt == *bytes.at(d.to_version));
    EXPECT_LT(d.size, v1.size() / 10);  // Small edits make small patches.
  }
  EXPECT_EQ(pairs, (std::set<std::pair<std::string, std::string>>{
                       {"1.0.0", "1.1.0"}, {"1.0.0", "1.2.0"}, {"1.1.0", "1.2.0"}}));

  Result<std::vector<DeltaInfo>> to3 = repo->ListDeltas("app", std::nullopt, "1.2.0");
  ASSERT_TRUE(to3.ok());
  EXPECT_EQ(to3->size(), 2u);
  Result<std::vector<DeltaInfo>> from1 = repo->ListDeltas("app", "1.0.0", "1.1.0");
  ASSERT_TRUE(from1.ok());
  ASSERT_EQ(from1->size(), 1u);
  Result<DeltaInfo> got = repo->GetDelta(from1->front().id);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->to_version, "1.1.0");
  EXPECT_EQ(CodeOf(repo->GetDelta(9999)), ErrorCode::kNotFound);

  Result<std::vector<DeltaInfo>> jobs = repo->ListJobs(2);
  ASSERT_TRUE(jobs.ok());
  ASSERT_EQ(jobs->size(), 2u);
  EXPECT_GT(jobs->at(0).id, jobs->at(1).id);  // Newest first.

  Result<VersionInfo> latest = repo->Latest("app");
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(latest->version, "1.2.0");
  EXPECT_GT(latest->compressed_size, 0u);  // Measured by the jobs that made deltas to it.
  EXPECT_LT(latest->compressed_size, v3.size());

  const Metrics m = repo->GetMetrics();
  EXPECT_EQ(m.artifacts, 1u);
  EXPECT_EQ(m.versions, 3u);
  EXPECT_EQ(m.deltas_ready, 3u);
  EXPECT_EQ(m.jobs_queued + m.jobs_running, 0u);
  EXPECT_EQ(m.published_total, 3u);
  EXPECT_EQ(m.publish_bytes_total, v1.size() + v2.size() + v3.size());
  EXPECT_GT(m.job_seconds_total, 0.0);
  EXPECT_GE(m.blobs_bytes, v1.size() + v2.size() + v3.size());

  Result<std::vector<std::string>> artifacts = repo->ListArtifacts();
  ASSERT_TRUE(artifacts.ok());
  EXPECT_EQ(*artifacts, std::vector<std::string>{"app"});
}

TEST(RepoTest, WorkersMakeDeltasInTheBackground) {
  TempDir dir;
  RepoOptions o = TestOptions(dir.path());
  o.start_workers = true;
  o.job_workers = 2;
  o.job_memory_budget = 1;  // Every job is larger than the budget: they run one at a time.
  auto repo = OpenOrDie(o);
  ASSERT_NE(repo, nullptr);
  const Bytes v1 = BinaryImage(256 << 10, 7);
  const Bytes v2 = EditImage(v1, 8);
  const Bytes v3 = EditImage(v2, 9);
  ASSERT_TRUE(PublishBytes(repo.get(), "tool", "1", v1).ok());
  ASSERT_TRUE(PublishBytes(repo.get(), "tool", "2", v2).ok());
  ASSERT_TRUE(PublishBytes(repo.get(), "tool", "3", v3).ok());
  ASSERT_TRUE(repo->WaitForJobs(30000));
  Result<std::vector<DeltaInfo>> deltas = repo->ListDeltas("tool", std::nullopt, std::nullopt);
  ASSERT_TRUE(deltas.ok());
  ASSERT_EQ(deltas->size(), 3u);
  for (const DeltaInfo& d : *deltas) EXPECT_EQ(d.status, DeltaStatus::kReady) << d.error;
  repo->Shutdown();
  EXPECT_TRUE(repo->Latest("tool").ok());  // Reads still work after Shutdown.
}

TEST(RepoTest, RepublishSameBytesIsIdempotentOtherBytesConflict) {
  TempDir dir;
  auto repo = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(repo, nullptr);
  const Bytes a = BinaryImage(64 << 10, 1);
  const Bytes b = EditImage(a, 2);
  Result<PublishResult> first = PublishBytes(repo.get(), "app", "1.0.0", a);
  ASSERT_TRUE(first.ok());
  Result<PublishResult> again = PublishBytes(repo.get(), "app", "1.0.0", a);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_FALSE(again->created);
  EXPECT_EQ(again->version.sha256, first->version.sha256);
  EXPECT_EQ(again->version.seq, 1u);
  EXPECT_EQ(CodeOf(PublishBytes(repo.get(), "app", "1.0.0", b)), ErrorCode::kAlreadyExists);
  Result<std::vector<VersionInfo>> versions = repo->ListVersions("app");
  ASSERT_TRUE(versions.ok());
  EXPECT_EQ(versions->size(), 1u);
  EXPECT_EQ(repo->GetMetrics().published_total, 1u);
}

TEST(RepoTest, LabelsDependenciesAndPublisherAreKept) {
  TempDir dir;
  auto repo = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(repo, nullptr);
  Result<std::string> sha = Store(repo.get(), BinaryImage(10000, 3));
  ASSERT_TRUE(sha.ok());
  PublishRequest req;
  req.artifact = "fw";
  req.version = "2.1.0";
  req.labels = {{"channel", "beta"}, {"arch", "arm64"}};
  req.dependencies = {"bootloader >= 1.2", "modem"};
  req.publisher = "ci";
  ASSERT_TRUE(repo->Publish(req, *sha).ok());
  Result<VersionInfo> v = repo->GetVersion("fw", "2.1.0");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->labels, req.labels);
  EXPECT_EQ(v->dependencies, req.dependencies);
  EXPECT_EQ(v->publisher, "ci");
  EXPECT_GT(v->created_at, 0);
  EXPECT_EQ(CodeOf(repo->GetVersion("fw", "9.9.9")), ErrorCode::kNotFound);
  EXPECT_EQ(CodeOf(repo->ListVersions("nope")), ErrorCode::kNotFound);
  EXPECT_EQ(CodeOf(repo->Latest("nope")), ErrorCode::kNotFound);
  EXPECT_EQ(CodeOf(repo->ListDeltas("nope", std::nullopt, std::nullopt)), ErrorCode::kNotFound);
}

TEST(RepoTest, DeclaredDigestMismatchStoresNothing) {
  TempDir dir;
  auto repo = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(repo, nullptr);
  const Bytes data = BinaryImage(100000, 5);
  const std::string sha = ToHex(Sha256::Of(data));
  std::string wrong = sha;
  wrong[0] = wrong[0] == '0' ? '1' : '0';

  {
    Result<std::unique_ptr<Upload>> up = repo->BeginUpload(wrong, data.size());
    ASSERT_TRUE(up.ok());
    ASSERT_TRUE((*up)->Write(data).ok());
    EXPECT_EQ((*up)->bytes_written(), data.size());
    EXPECT_EQ(CodeOf((*up)->Commit()), ErrorCode::kDigestMismatch);
    EXPECT_TRUE(FilesUnder(dir.Join("tmp")).empty());  // Removed at once, not at destruction.
  }
  {
    Result<std::unique_ptr<Upload>> up = repo->BeginUpload(sha, data.size() + 1);
    ASSERT_TRUE(up.ok());
    ASSERT_TRUE((*up)->Write(data).ok());
    EXPECT_EQ(CodeOf((*up)->Commit()), ErrorCode::kDigestMismatch);
  }
  {
    Result<std::unique_ptr<Upload>> up = repo->BeginUpload(std::nullopt, data.size() - 1);
    ASSERT_TRUE(up.ok());
    EXPECT_EQ(CodeOf((*up)->Write(data)), ErrorCode::kDigestMismatch);  // Longer than declared.
    EXPECT_EQ(CodeOf((*up)->Commit()), ErrorCode::kDigestMismatch);
  }
  {
    Result<std::unique_ptr<Upload>> up = repo->BeginUpload(std::nullopt, std::nullopt);
    ASSERT_TRUE(up.ok());
    ASSERT_TRUE((*up)->Write(data).ok());
    // Abandoned: the destructor drops the temp file.
  }
  EXPECT_EQ(CodeOf(repo->BeginUpload("not-hex", std::nullopt)), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(FilesUnder(dir.Join("tmp")).empty());
  EXPECT_TRUE(FilesUnder(dir.Join("blobs")).empty());
  EXPECT_EQ(CodeOf(repo->OpenBlob(sha)), ErrorCode::kNotFound);

  PublishRequest req;
  req.artifact = "app";
  req.version = "1.0.0";
  EXPECT_EQ(CodeOf(repo->Publish(req, sha)), ErrorCode::kNotFound);  // Blob never stored.
  EXPECT_EQ(CodeOf(repo->Publish(req, "../../etc/passwd")), ErrorCode::kInvalidArgument);
  EXPECT_EQ(CodeOf(repo->ListVersions("app")), ErrorCode::kNotFound);

  // The same upload done right is stored under its hash; an upper-case declaration is fine.
  std::string upper = sha;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  Result<std::unique_ptr<Upload>> up = repo->BeginUpload(upper, data.size());
  ASSERT_TRUE(up.ok());
  ASSERT_TRUE((*up)->Write(data).ok());
  Result<std::string> committed = (*up)->Commit();
  ASSERT_TRUE(committed.ok()) << committed.status().ToString();
  EXPECT_EQ(*committed, sha);
  EXPECT_EQ(FilesUnder(dir.Join("blobs")),
            std::vector<std::string>{sha.substr(0, 2) + "/" + sha.substr(2, 2) + "/" + sha});
}

TEST(RepoTest, IdenticalBlobsAreStoredOnce) {
  TempDir dir;
  auto repo = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(repo, nullptr);
  const Bytes data = BinaryImage(50000, 9);
  ASSERT_TRUE(PublishBytes(repo.get(), "a", "1.0.0", data).ok());
  ASSERT_TRUE(PublishBytes(repo.get(), "b", "1.0.0", data).ok());
  ASSERT_TRUE(PublishBytes(repo.get(), "a", "1.0.1", data).ok());  // Same bytes, new version.
  // The artifact and its chunk map (docs/PROTOCOL.md), each once.
  EXPECT_EQ(FilesUnder(dir.Join("blobs")).size(), 2u);
  Result<std::vector<DeltaInfo>> deltas = repo->ListDeltas("a", std::nullopt, std::nullopt);
  ASSERT_TRUE(deltas.ok());
  EXPECT_TRUE(deltas->empty());  // No delta between identical bytes.
}

TEST(RepoTest, OpenBlobValidatesNames) {
  TempDir dir;
  auto repo = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(repo, nullptr);
  const Bytes data = BinaryImage(5000, 2);
  Result<std::string> sha = Store(repo.get(), data);
  ASSERT_TRUE(sha.ok());
  Result<BlobRef> ref = repo->OpenBlob(*sha);
  ASSERT_TRUE(ref.ok());
  EXPECT_EQ(ref->size, data.size());
  EXPECT_EQ(ReadFile(ref->path).value(), data);
  std::string upper = *sha;
  upper[0] = 'A';
  for (const std::string& bad :
       {std::string(""), std::string("../") + sha->substr(3), upper, sha->substr(1), *sha + "0",
        std::string(64, 'g'), std::string(63, 'a') + std::string(1, '\0')}) {
    EXPECT_EQ(CodeOf(repo->OpenBlob(bad)), ErrorCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(CodeOf(repo->OpenBlob(std::string(64, 'a'))), ErrorCode::kNotFound);
}

TEST(RepoTest, NameValidation) {
  const std::string max_name(128, 'a');
  struct Case {
    std::string name;
    bool artifact_ok, version_ok;
  };
  const std::vector<Case> cases = {
      {"app", true, true},
      {"a", true, true},
      {"App-1.2_x", true, true},
      {"0", true, true},
      {"1.0.0+build.5", false, true},  // '+' only in versions.
      {max_name, true, true},
      {max_name + "a", false, false},
      {"", false, false},
      {".", false, false},
      {"..", false, false},
      {"../etc", false, false},
      {"a/b", false, false},
      {"/abs", false, false},
      {"a\\b", false, false},
      {std::string("a\0b", 3), false, false},
      {".hidden", false, false},
      {"-rf", false, false},
      {"_x", false, false},
      {"+1", false, false},
      {"a b", false, false},
      {"a\nb", false, false},
      {"caf\xc3\xa9", false, false},
      {"a:b", false, false},
      {"a%2f", false, false},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(Repository::ValidateArtifactName(c.name).ok(), c.artifact_ok) << c.name;
    EXPECT_EQ(Repository::ValidateVersion(c.name).ok(), c.version_ok) << c.name;
    if (!c.artifact_ok) {
      EXPECT_EQ(Repository::ValidateArtifactName(c.name).code(), ErrorCode::kInvalidArgument);
    }
  }

  TempDir dir;
  auto repo = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(repo, nullptr);
  EXPECT_EQ(CodeOf(PublishBytes(repo.get(), "../x", "1.0.0", BinaryImage(100, 1))),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(CodeOf(PublishBytes(repo.get(), "x", "1/0", BinaryImage(100, 1))),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(CodeOf(repo->GetVersion("x", "..")), ErrorCode::kInvalidArgument);
  EXPECT_EQ(CodeOf(repo->SignedMetadata("../x")), ErrorCode::kInvalidArgument);
}

TEST(RepoTest, SemverOrderingPicksDeltaBasesBelowTheNewVersion) {
  TempDir dir;
  RepoOptions o = TestOptions(dir.path());
  o.delta_history = 2;
  auto repo = OpenOrDie(o);
  ASSERT_NE(repo, nullptr);
  auto publish = [&](const std::string& version, uint64_t seed) {
    Result<PublishResult> r = PublishBytes(repo.get(), "app", version, BinaryImage(1000, seed));
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    std::vector<std::string> froms;
    if (!r.ok()) return froms;
    for (int64_t id : r->queued_deltas) froms.push_back(repo->GetDelta(id)->from_version);
    return froms;
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(publish("1.0.0", 1), V{});
  EXPECT_EQ(publish("2.0.0", 2), V{"1.0.0"});
  // Published after 2.0.0 but older: deltas from the versions below it, none to 2.0.0.
  EXPECT_EQ(publish("1.5.0", 3), V{"1.0.0"});
  EXPECT_EQ(publish("2.0.0-rc.1", 4), (V{"1.0.0", "1.5.0"}));
  EXPECT_EQ(publish("2.0.0-rc.2", 5), (V{"1.5.0", "2.0.0-rc.1"}));
  EXPECT_EQ(publish("2.1.0+build.7", 6), (V{"2.0.0-rc.2", "2.0.0"}));

  Result<std::vector<VersionInfo>> versions = repo->ListVersions("app");
  ASSERT_TRUE(versions.ok());
  EXPECT_EQ(VersionNames(*versions),
            (V{"1.0.0", "1.5.0", "2.0.0-rc.1", "2.0.0-rc.2", "2.0.0", "2.1.0+build.7"}));
  EXPECT_EQ(versions->at(4).seq, 2u);
  EXPECT_EQ(repo->Latest("app")->version, "2.1.0+build.7");
}

TEST(RepoTest, NonSemverVersionsUsePublishOrder) {
  TempDir dir;
  auto repo = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(repo, nullptr);
  for (const char* v : {"2.0.0", "1.0.0", "nightly-2024", "0.1.0"}) {
    ASSERT_TRUE(PublishBytes(repo.get(), "mixed", v, BinaryImage(500, v[0])).ok());
  }
  Result<std::vector<VersionInfo>> versions = repo->ListVersions("mixed");
  ASSERT_TRUE(versions.ok());
  EXPECT_EQ(VersionNames(*versions),
            (std::vector<std::string>{"2.0.0", "1.0.0", "nightly-2024", "0.1.0"}));
  EXPECT_EQ(repo->Latest("mixed")->version, "0.1.0");
  // "1.2" is not semver either.
  ASSERT_TRUE(PublishBytes(repo.get(), "short", "1.10", BinaryImage(500, 1)).ok());
  ASSERT_TRUE(PublishBytes(repo.get(), "short", "1.9", BinaryImage(500, 2)).ok());
  EXPECT_EQ(repo->Latest("short")->version, "1.9");
}

TEST(RepoTest, UnrelatedNewVersionIsNotWorthADelta) {
  TempDir dir;
  auto repo = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(repo, nullptr);
  const Bytes v1 = ::ds::testing::RandomBytes(200 << 10, 1);
  const Bytes v2 = ::ds::testing::RandomBytes(200 << 10, 2);
  ASSERT_TRUE(PublishBytes(repo.get(), "noise", "1.0.0", v1).ok());
  ASSERT_TRUE(PublishBytes(repo.get(), "noise", "1.0.1", v2).ok());
  ASSERT_TRUE(repo->RunJobsOnce().ok());
  Result<std::vector<DeltaInfo>> deltas = repo->ListDeltas("noise", std::nullopt, std::nullopt);
  ASSERT_TRUE(deltas.ok());
  ASSERT_EQ(deltas->size(), 1u);
  const DeltaInfo& d = deltas->front();
  EXPECT_EQ(d.status, DeltaStatus::kNotWorth);
  EXPECT_GT(d.size, 0u);
  EXPECT_TRUE(d.sha256.empty());
  // Two artifacts and their chunk maps: the patch (and any chunk map of it) was not kept.
  EXPECT_EQ(FilesUnder(dir.Join("blobs")).size(), 4u);
  EXPECT_EQ(repo->GetMetrics().deltas_not_worth, 1u);
  Result<std::string> metadata = repo->SignedMetadata("noise");
  ASSERT_TRUE(metadata.ok());
  EXPECT_NE(metadata->find("\"deltas\":[]"), std::string::npos) << *metadata;
}

TEST(RepoTest, TokensHaveScopesAndAreStoredHashed) {
  TempDir dir;
  auto repo = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(repo, nullptr);
  EXPECT_FALSE(repo->HasTokens());
  Result<std::string> reader = repo->CreateToken("dashboard", TokenScope::kRead);
  Result<std::string> publisher = repo->CreateToken("ci", TokenScope::kPublish);
  Result<std::string> admin = repo->CreateToken("ops", TokenScope::kAdmin);
  ASSERT_TRUE(reader.ok() && publisher.ok() && admin.ok());
  EXPECT_TRUE(repo->HasTokens());
  EXPECT_EQ(publisher->size(), 64u);
  EXPECT_NE(*reader, *publisher);

  EXPECT_EQ(repo->CheckToken(*reader, TokenScope::kRead).value(), "dashboard");
  EXPECT_EQ(CodeOf(repo->CheckToken(*reader, TokenScope::kPublish)), ErrorCode::kPermissionDenied);
  EXPECT_EQ(repo->CheckToken(*publisher, TokenScope::kRead).value(), "ci");
  EXPECT_EQ(repo->CheckToken(*publisher, TokenScope::kPublish).value(), "ci");
  EXPECT_EQ(CodeOf(repo->CheckToken(*publisher, TokenScope::kAdmin)), ErrorCode::kPermissionDenied);
  EXPECT_EQ(repo->CheckToken(*admin, TokenScope::kAdmin).value(), "ops");
  EXPECT_EQ(CodeOf(repo->CheckToken("", TokenScope::kRead)), ErrorCode::kUnauthenticated);
  EXPECT_EQ(CodeOf(repo->CheckToken(std::string(64, '0'), TokenScope::kRead)),
            ErrorCode::kUnauthenticated);
  std::string altered = *admin;
  altered[10] = altered[10] == 'a' ? 'b' : 'a';
  EXPECT_EQ(CodeOf(repo->CheckToken(altered, TokenScope::kRead)), ErrorCode::kUnauthenticated);
  EXPECT_EQ(CodeOf(repo->CreateToken("", TokenScope::kRead)), ErrorCode::kInvalidArgument);

  // Tokens survive a restart; their plaintext is nowhere in the catalog files.
  repo.reset();
  std::string catalog_text;
  for (const std::string& f : FilesUnder(dir.path())) {
    if (f.rfind("catalog.db", 0) != 0) continue;
    const Bytes b = ReadFile(dir.Join(f)).value();
    catalog_text.append(b.begin(), b.end());
  }
  ASSERT_FALSE(catalog_text.empty());
  for (const std::string* t : {&*reader, &*publisher, &*admin}) {
    EXPECT_EQ(catalog_text.find(*t), std::string::npos);
    EXPECT_NE(catalog_text.find(ToHex(Sha256::Of(AsBytes(*t)))), std::string::npos);
  }
  repo = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(repo, nullptr);
  EXPECT_EQ(repo->CheckToken(*publisher, TokenScope::kPublish).value(), "ci");
}

TEST(RepoTest, ReopenKeepsCatalogAndKey) {
  TempDir dir;
  std::string key_id;
  {
    auto repo = OpenOrDie(TestOptions(dir.path()));
    ASSERT_NE(repo, nullptr);
    ASSERT_TRUE(PublishBytes(repo.get(), "app", "1.0.0", BinaryImage(3000, 1)).ok());
    ASSERT_TRUE(PublishBytes(repo.get(), "app", "1.0.1", BinaryImage(3000, 2)).ok());
    key_id = repo->key_id();
  }
  auto repo = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(repo, nullptr);
  EXPECT_EQ(repo->key_id(), key_id);
  EXPECT_EQ(repo->Latest("app")->version, "1.0.1");
  EXPECT_EQ(repo->GetMetrics().jobs_queued, 1u);      // The queued job survived the restart.
  EXPECT_EQ(repo->GetMetrics().published_total, 0u);  // Counters are since Open().
  ASSERT_TRUE(repo->RunJobsOnce().ok());
  EXPECT_EQ(repo->GetMetrics().jobs_queued, 0u);
}

TEST(RepoTest, FailingJobIsRetriedThenMarkedFailed) {
  TempDir dir;
  auto repo = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(repo, nullptr);
  const Bytes v1 = BinaryImage(20000, 1);
  ASSERT_TRUE(PublishBytes(repo.get(), "app", "1.0.0", v1).ok());
  Result<PublishResult> p = PublishBytes(repo.get(), "app", "1.1.0", EditImage(v1, 2));
  ASSERT_TRUE(p.ok());
  // The base blob vanishes (operator error, bad disk): every attempt fails.
  ASSERT_TRUE(repo->OpenBlob(ToHex(Sha256::Of(v1))).ok());
  ASSERT_EQ(::unlink(repo->OpenBlob(ToHex(Sha256::Of(v1)))->path.c_str()), 0);
  ASSERT_TRUE(repo->RunJobsOnce().ok());
  Result<DeltaInfo> d = repo->GetDelta(p->queued_deltas.at(0));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->status, DeltaStatus::kFailed);
  EXPECT_EQ(d->attempts, 3);
  EXPECT_NE(d->error.find("not_found"), std::string::npos) << d->error;
  EXPECT_EQ(repo->GetMetrics().deltas_failed, 1u);
  EXPECT_TRUE(repo->WaitForJobs(0));  // Failed jobs are not pending.
}

TEST(RepoTest, OneInstancePerDataDirectory) {
  TempDir dir;
  auto repo = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(repo, nullptr);
  // A second instance would empty tmp/ under the first one's uploads.
  EXPECT_EQ(CodeOf(Repository::Open(TestOptions(dir.path()))), ErrorCode::kUnavailable);
  repo.reset();
  EXPECT_TRUE(Repository::Open(TestOptions(dir.path())).ok());
}

TEST(RepoTest, OpenRejectsBadOptions) {
  RepoOptions o;
  EXPECT_EQ(CodeOf(Repository::Open(o)), ErrorCode::kInvalidArgument);
  TempDir dir;
  o = TestOptions(dir.path());
  o.worth_ratio = 0;
  EXPECT_EQ(CodeOf(Repository::Open(o)), ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace ds::repo
