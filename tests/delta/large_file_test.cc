// Slow test: diffs and applies a sparse new file above 4 GiB, verifying the result by streaming.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "cli/commands.h"
#include "common/fs.h"
#include "common/hash.h"
#include "delta/delta.h"
#include "support/test_util.h"

namespace ds {
namespace {

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kGiB = 1ull << 30;
constexpr uint64_t kNewSize = 4 * kGiB + 3 * kMiB;
constexpr uint64_t kRequiredFreeBytes = 12 * kGiB;

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

void PwriteOrDie(int fd, ByteView data, uint64_t offset) {
  ASSERT_EQ(::pwrite(fd, data.data(), data.size(), static_cast<off_t>(offset)),
            static_cast<ssize_t>(data.size()));
}

// Compares two files chunk by chunk and returns the SHA-256 of the first (never holding more
// than two chunks in memory).
Sha256Digest CompareAndHash(const std::string& a_path, const std::string& b_path, bool* equal) {
  *equal = false;
  auto a = RandomAccessFile::Open(a_path);
  auto b = RandomAccessFile::Open(b_path);
  EXPECT_TRUE(a.ok() && b.ok());
  if (!a.ok() || !b.ok() || (*a)->size() != (*b)->size()) return {};
  Sha256 sha;
  Bytes abuf(16 * kMiB), bbuf(16 * kMiB);
  bool same = true;
  for (uint64_t pos = 0; pos < (*a)->size(); pos += abuf.size()) {
    const size_t n = std::min<uint64_t>(abuf.size(), (*a)->size() - pos);
    std::span<uint8_t> ac(abuf.data(), n), bc(bbuf.data(), n);
    EXPECT_TRUE((*a)->ReadAt(pos, ac).ok());
    EXPECT_TRUE((*b)->ReadAt(pos, bc).ok());
    if (same && std::memcmp(ac.data(), bc.data(), n) != 0) {
      ADD_FAILURE() << "files differ in the chunk at offset " << pos;
      same = false;
    }
    sha.Update(ac);
  }
  *equal = same;
  return sha.Finish();
}

TEST(LargeFileTest, NewFileAboveFourGiB) {
  const std::string root = testing::TempRoot();
  struct statvfs vfs;
  ASSERT_EQ(::statvfs(root.c_str(), &vfs), 0) << root;
  const uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  if (free_bytes < kRequiredFreeBytes) {
    GTEST_SKIP() << "needs " << kRequiredFreeBytes / kGiB << " GiB free under " << root << ", only "
                 << free_bytes / kMiB << " MiB available";
  }

  testing::TempDir dir;
  const std::string old_path = dir.Join("old"), new_path = dir.Join("new");
  const std::string patch_path = dir.Join("patch"), out_path = dir.Join("out");

  // Old: 1 MiB of zeros, then 1 MiB of random bytes.
  const Bytes random = testing::RandomBytes(kMiB, 42);
  Bytes old_bytes(kMiB, 0);
  old_bytes.insert(old_bytes.end(), random.begin(), random.end());
  testing::WriteFileOrDie(old_path, old_bytes);

  // New: 4 GiB + 3 MiB, sparse; the random MiB (with some bytes changed) at 4 GiB + 1 MiB, and a
  // marker straddling the 2^32 boundary to catch 32-bit offset truncation.
  {
    const int fd = ::open(new_path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(kNewSize)), 0);
    Bytes changed = random;
    for (size_t i = 777; i < changed.size(); i += 65536) changed[i] ^= 0xA5;
    PwriteOrDie(fd, changed, 4 * kGiB + kMiB);
    PwriteOrDie(fd, testing::ToBytes("<-4GiB boundary->"), 4 * kGiB - 8);
    ASSERT_EQ(::close(fd), 0);
  }

  auto t0 = std::chrono::steady_clock::now();
  cli::DiffArgs diff;
  diff.old_path = old_path;
  diff.new_path = new_path;
  diff.patch_path = patch_path;
  Status s = cli::RunDiff(diff);
  ASSERT_TRUE(s.ok()) << s.ToString();
  const double diff_seconds = Seconds(t0);
  Result<uint64_t> patch_size = FileSize(patch_path);
  ASSERT_TRUE(patch_size.ok());
  std::printf("diff: %.1f s, patch %llu bytes\n", diff_seconds,
              static_cast<unsigned long long>(*patch_size));
  EXPECT_LT(*patch_size, 4 * kMiB) << "zeros and a copied MiB should diff to little";

  t0 = std::chrono::steady_clock::now();
  s = delta::ApplyPatchFile(old_path, patch_path, out_path);
  ASSERT_TRUE(s.ok()) << s.ToString();
  std::printf("apply: %.1f s\n", Seconds(t0));

  Result<uint64_t> out_size = FileSize(out_path);
  ASSERT_TRUE(out_size.ok());
  ASSERT_EQ(*out_size, kNewSize);

  t0 = std::chrono::steady_clock::now();
  bool equal = false;
  const Sha256Digest out_sha = CompareAndHash(out_path, new_path, &equal);
  EXPECT_TRUE(equal);
  std::printf("verify: %.1f s, sha256 %s\n", Seconds(t0), ToHex(out_sha).c_str());

  // The header's SHA-256 (computed by the generator over the mapped file) matches too.
  Result<Bytes> patch = ReadFile(patch_path);
  ASSERT_TRUE(patch.ok());
  Result<delta::PatchInfo> info = delta::InspectPatch(*patch);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->header.new_size, kNewSize);
  EXPECT_EQ(info->header.new_sha256, out_sha);
  EXPECT_GT(info->segments.size(), 1024u);
}

}  // namespace
}  // namespace ds
