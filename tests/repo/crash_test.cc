// Crash safety and disk full: a process killed mid-upload, a job left running, ENOSPC.
#include <SQLiteCpp/SQLiteCpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "common/fs.h"
#include "common/hash.h"
#include "repo/repo.h"
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
using testing::TestOptions;

// Every blob is named by the SHA-256 of its bytes.
void ExpectBlobsIntact(const std::string& data_dir) {
  for (const std::string& f : FilesUnder(data_dir + "/blobs")) {
    const Bytes b = ReadFile(data_dir + "/blobs/" + f).value();
    EXPECT_EQ(f.substr(6), ToHex(Sha256::Of(b))) << f;
  }
}

TEST(CrashTest, KilledMidUploadLeavesNoTraceAfterReopen) {
  TempDir dir;
  const std::string data = dir.Join("repo");
  const Bytes v1 = BinaryImage(300 << 10, 1);
  const Bytes v2 = EditImage(v1, 2);
  const Bytes v3 = EditImage(v2, 3);
  {
    auto repo = OpenOrDie(TestOptions(data));
    ASSERT_NE(repo, nullptr);
    ASSERT_TRUE(PublishBytes(repo.get(), "app", "1.0.0", v1).ok());
  }

  int pipefd[2];
  ASSERT_EQ(::pipe(pipefd), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Child: publish 1.1.0, then start uploading 1.2.0 and a publish that never comes; tell the
    // parent when half of the upload is written and wait to be killed. No gtest macros here.
    ::close(pipefd[0]);
    Result<std::unique_ptr<Repository>> repo = Repository::Open(TestOptions(data));
    char status = 'E';
    if (repo.ok() && PublishBytes(repo->get(), "app", "1.1.0", v2).ok()) {
      Result<std::unique_ptr<Upload>> up = (*repo)->BeginUpload(ToHex(Sha256::Of(v3)), v3.size());
      if (up.ok() && (*up)->Write(ByteView(v3).first(v3.size() / 2)).ok()) status = 'R';
      if (::write(pipefd[1], &status, 1) != 1) ::_exit(3);
      while (true) ::pause();
    }
    if (::write(pipefd[1], &status, 1) != 1) ::_exit(3);
    ::_exit(2);
  }
  ::close(pipefd[1]);
  char status = 0;
  ASSERT_EQ(::read(pipefd[0], &status, 1), 1);
  ::close(pipefd[0]);
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  int wstatus = 0;
  ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
  ASSERT_EQ(status, 'R') << "the child failed before the upload";
  EXPECT_TRUE(WIFSIGNALED(wstatus));

  // The half upload is in tmp/ until the next Open().
  EXPECT_EQ(FilesUnder(data + "/tmp").size(), 1u);
  auto repo = OpenOrDie(TestOptions(data));
  ASSERT_NE(repo, nullptr);
  EXPECT_TRUE(FilesUnder(data + "/tmp").empty());
  Result<std::vector<VersionInfo>> versions = repo->ListVersions("app");
  ASSERT_TRUE(versions.ok());
  ASSERT_EQ(versions->size(), 2u);
  EXPECT_EQ(versions->back().version, "1.1.0");
  // v1 and v2 and their chunk maps; nothing of v3.
  EXPECT_EQ(FilesUnder(data + "/blobs").size(), 4u);
  EXPECT_EQ(CodeOf(repo->OpenBlob(ToHex(Sha256::Of(v3)))), ErrorCode::kNotFound);
  ExpectBlobsIntact(data);
  // The catalog is usable: the job queued by the child runs, v3 can be published.
  ASSERT_TRUE(repo->RunJobsOnce().ok());
  Result<std::vector<DeltaInfo>> deltas = repo->ListDeltas("app", std::nullopt, std::nullopt);
  ASSERT_TRUE(deltas.ok());
  ASSERT_EQ(deltas->size(), 1u);
  EXPECT_EQ(deltas->front().status, DeltaStatus::kReady);
  ASSERT_TRUE(PublishBytes(repo.get(), "app", "1.2.0", v3).ok());
  EXPECT_TRUE(VerifyMetadata(repo->SignedMetadata("app").value(), repo->public_key_hex(),
                             static_cast<int64_t>(::time(nullptr)), 0)
                  .ok());
}

TEST(CrashTest, JobLeftRunningIsRequeuedAtOpenAndCompletes) {
  TempDir dir;
  const std::string data = dir.Join("repo");
  const Bytes v1 = BinaryImage(200 << 10, 4);
  const Bytes v2 = EditImage(v1, 5);
  int64_t id = 0;
  {
    auto repo = OpenOrDie(TestOptions(data));
    ASSERT_NE(repo, nullptr);
    ASSERT_TRUE(PublishBytes(repo.get(), "app", "1.0.0", v1).ok());
    Result<PublishResult> p = PublishBytes(repo.get(), "app", "1.1.0", v2);
    ASSERT_TRUE(p.ok());
    ASSERT_EQ(p->queued_deltas.size(), 1u);
    id = p->queued_deltas[0];
  }
  // What a worker killed mid-job leaves behind: the row marked running, a temp output.
  {
    SQLite::Database db(data + "/catalog.db", SQLite::OPEN_READWRITE);
    SQLite::Statement q(db, "UPDATE deltas SET status = 'running', attempts = 1 WHERE id = ?");
    q.bind(1, id);
    ASSERT_EQ(q.exec(), 1);
  }
  ::ds::testing::WriteFileOrDie(data + "/tmp/job.partial", AsBytes("half a patch"));

  RepoOptions o = TestOptions(data);
  o.start_workers = true;
  auto repo = OpenOrDie(o);
  ASSERT_NE(repo, nullptr);
  EXPECT_TRUE(FilesUnder(data + "/tmp").empty());
  ASSERT_TRUE(repo->WaitForJobs(30000));
  Result<DeltaInfo> d = repo->GetDelta(id);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->status, DeltaStatus::kReady) << d->error;
  EXPECT_EQ(d->attempts, 2);
  EXPECT_TRUE(repo->OpenBlob(d->sha256).ok());
}

// A small tmpfs as the data directory: filling it must fail the one request with kNoSpace.
class CrashDiskFullTest : public ::testing::Test {
 protected:
  void SetUp() override {
    mnt_ = dir_.Join("mnt");
    ASSERT_EQ(::mkdir(mnt_.c_str(), 0755), 0);
    if (::mount("tmpfs", mnt_.c_str(), "tmpfs", 0, "size=2m") != 0) {
      GTEST_SKIP() << "cannot mount a tmpfs (needs root / CAP_SYS_ADMIN): " << std::strerror(errno);
    }
    mounted_ = true;
  }
  void TearDown() override {
    if (mounted_) ::umount2(mnt_.c_str(), MNT_DETACH);
  }

  TempDir dir_;
  std::string mnt_;
  bool mounted_ = false;
};

TEST_F(CrashDiskFullTest, BigUploadFailsWithNoSpaceAndEarlierVersionsSurvive) {
  const std::string data = mnt_ + "/repo";
  const Bytes v1 = BinaryImage(300 << 10, 6);
  const Bytes big = ::ds::testing::RandomBytes(3 << 20, 7);
  auto repo = OpenOrDie(TestOptions(data));
  ASSERT_NE(repo, nullptr);
  ASSERT_TRUE(PublishBytes(repo.get(), "app", "1.0.0", v1).ok());

  Result<PublishResult> r = PublishBytes(repo.get(), "app", "2.0.0", big);
  EXPECT_EQ(CodeOf(r), ErrorCode::kNoSpace) << r.status().ToString();
  EXPECT_TRUE(FilesUnder(data + "/tmp").empty());  // The space is given back at once.

  Result<std::vector<VersionInfo>> versions = repo->ListVersions("app");
  ASSERT_TRUE(versions.ok());
  ASSERT_EQ(versions->size(), 1u);
  EXPECT_EQ(versions->front().version, "1.0.0");
  Result<BlobRef> blob = repo->OpenBlob(ToHex(Sha256::Of(v1)));
  ASSERT_TRUE(blob.ok());
  EXPECT_EQ(ReadFile(blob->path).value(), v1);
  ExpectBlobsIntact(data);

  // Still working afterwards, also across a restart.
  ASSERT_TRUE(PublishBytes(repo.get(), "app", "1.1.0", EditImage(v1, 8)).ok());
  repo.reset();
  repo = OpenOrDie(TestOptions(data));
  ASSERT_NE(repo, nullptr);
  EXPECT_EQ(repo->Latest("app")->version, "1.1.0");
  EXPECT_TRUE(VerifyMetadata(repo->SignedMetadata("app").value(), repo->public_key_hex(),
                             static_cast<int64_t>(::time(nullptr)), 0)
                  .ok());
}

}  // namespace
}  // namespace ds::repo
