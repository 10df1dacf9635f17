// Tests Status, Result and the error macros: stable code numbers, names, formatting, propagation.
#include "common/status.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <memory>
#include <set>
#include <string>

#include "support/test_util.h"

namespace ds {
namespace {

// Every code with the number it must keep forever (exit codes and wire reports).
struct CodeCase {
  ErrorCode code;
  int number;
  const char* name;
};
constexpr CodeCase kAllCodes[] = {
    {ErrorCode::kOk, 0, "ok"},
    {ErrorCode::kInvalidArgument, 1, "invalid_argument"},
    {ErrorCode::kIoError, 2, "io_error"},
    {ErrorCode::kNotFound, 3, "not_found"},
    {ErrorCode::kNoSpace, 4, "no_space"},
    {ErrorCode::kInternal, 5, "internal"},
    {ErrorCode::kResourceLimit, 6, "resource_limit"},
    {ErrorCode::kUnsupported, 7, "unsupported"},
    {ErrorCode::kPatchBadMagic, 20, "patch_bad_magic"},
    {ErrorCode::kPatchVersion, 21, "patch_version"},
    {ErrorCode::kPatchTruncated, 22, "patch_truncated"},
    {ErrorCode::kPatchChecksum, 23, "patch_checksum"},
    {ErrorCode::kPatchMalformed, 24, "patch_malformed"},
    {ErrorCode::kPatchSegmentOrder, 25, "patch_segment_order"},
    {ErrorCode::kPatchWrongBase, 26, "patch_wrong_base"},
    {ErrorCode::kPatchResultMismatch, 27, "patch_result_mismatch"},
    {ErrorCode::kPatchUnknownMethod, 28, "patch_unknown_method"},
    {ErrorCode::kPatchDecompress, 29, "patch_decompress"},
    {ErrorCode::kPatchTrailingData, 30, "patch_trailing_data"},
    {ErrorCode::kPatchOutputMismatch, 31, "patch_output_mismatch"},
    {ErrorCode::kAlreadyExists, 50, "already_exists"},
    {ErrorCode::kUnauthenticated, 51, "unauthenticated"},
    {ErrorCode::kPermissionDenied, 52, "permission_denied"},
    {ErrorCode::kDigestMismatch, 53, "digest_mismatch"},
    {ErrorCode::kBadSignature, 54, "bad_signature"},
    {ErrorCode::kExpired, 55, "expired"},
    {ErrorCode::kRollback, 56, "rollback"},
    {ErrorCode::kTooLarge, 57, "too_large"},
    {ErrorCode::kUnavailable, 58, "unavailable"},
    {ErrorCode::kProtocol, 59, "protocol"},
    {ErrorCode::kHealthCheck, 70, "health_check"},
    {ErrorCode::kDeferred, 71, "deferred"},
    {ErrorCode::kBusy, 72, "busy"},
};

TEST(StatusTest, CodeNumbersAreStable) {
  for (const CodeCase& c : kAllCodes) {
    EXPECT_EQ(static_cast<int>(c.code), c.number) << c.name;
    EXPECT_LT(c.number, 256) << "codes are process exit codes";
  }
}

TEST(StatusTest, CodeNamesAreStableAndDistinct) {
  std::set<std::string_view> seen;
  for (const CodeCase& c : kAllCodes) {
    EXPECT_EQ(ErrorCodeName(c.code), c.name);
    EXPECT_TRUE(seen.insert(ErrorCodeName(c.code)).second) << "duplicate name " << c.name;
  }
}

TEST(StatusTest, UnassignedNumberHasUnknownName) {
  EXPECT_EQ(ErrorCodeName(static_cast<ErrorCode>(19)), "unknown");
  EXPECT_EQ(ErrorCodeName(static_cast<ErrorCode>(255)), "unknown");
}

TEST(StatusTest, DefaultIsOk) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kOk);
  EXPECT_EQ(s.exit_code(), 0);
  EXPECT_EQ(s.ToString(), "ok");
  EXPECT_TRUE(Status::Ok().ok());
}

TEST(StatusTest, ErrorCarriesCodeMessageAndExitCode) {
  Status s = Error(ErrorCode::kPatchChecksum, "segment 3 payload checksum mismatch");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kPatchChecksum);
  EXPECT_EQ(s.exit_code(), 23);
  EXPECT_EQ(s.message(), "segment 3 payload checksum mismatch");
  EXPECT_EQ(s.ToString(), "patch_checksum (23): segment 3 payload checksum mismatch");
}

TEST(StatusTest, ToStringWithoutMessageOmitsColon) {
  EXPECT_EQ(Status(ErrorCode::kNotFound, "").ToString(), "not_found (3)");
}

TEST(StatusTest, WithContextPrependsAndKeepsCode) {
  Status s = Error(ErrorCode::kPatchDecompress, "zstd: corrupted block").WithContext("segment 2");
  EXPECT_EQ(s.code(), ErrorCode::kPatchDecompress);
  EXPECT_EQ(s.message(), "segment 2: zstd: corrupted block");
}

TEST(StatusTest, WithContextOnOkStaysOk) {
  Status s = Status::Ok().WithContext("ignored");
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.message(), "");
}

TEST(StatusTest, ErrnoStatusMapsDiskFullToNoSpace) {
  EXPECT_EQ(ErrnoStatus("write x", ENOSPC).code(), ErrorCode::kNoSpace);
  EXPECT_EQ(ErrnoStatus("write x", EDQUOT).code(), ErrorCode::kNoSpace);
}

TEST(StatusTest, ErrnoStatusMapsMissingFileToNotFound) {
  Status s = ErrnoStatus("open /nope", ENOENT);
  EXPECT_EQ(s.code(), ErrorCode::kNotFound);
  EXPECT_NE(s.message().find("open /nope"), std::string::npos) << s.message();
}

TEST(StatusTest, ErrnoStatusMapsOtherErrorsToIoError) {
  EXPECT_EQ(ErrnoStatus("read", EIO).code(), ErrorCode::kIoError);
  EXPECT_EQ(ErrnoStatus("open", EACCES).code(), ErrorCode::kIoError);
}

TEST(ResultTest, HoldsValue) {
  Result<int> r = 42;
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 42);
  EXPECT_EQ(r.value(), 42);
  EXPECT_TRUE(r.status().ok());
}

TEST(ResultTest, HoldsError) {
  Result<int> r = Error(ErrorCode::kNotFound, "missing");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(r.status().message(), "missing");
}

TEST(ResultTest, BuiltFromOkStatusBecomesInternalError) {
  Result<int> r = Status::Ok();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kInternal);
}

TEST(ResultTest, MovesOutMoveOnlyValue) {
  Result<std::unique_ptr<int>> r = std::make_unique<int>(7);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(**r, 7);
  std::unique_ptr<int> p = std::move(r).value();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, 7);
}

TEST(ResultTest, ArrowReachesMembers) {
  Result<std::string> r = std::string("abc");
  EXPECT_EQ(r->size(), 3u);
}

// Helpers for the macro tests.
int g_evaluations = 0;

Status CountedStatus(ErrorCode code) {
  ++g_evaluations;
  return code == ErrorCode::kOk ? Status::Ok() : Error(code, "counted");
}

Result<int> CountedResult(bool ok, int value) {
  ++g_evaluations;
  if (!ok) return Error(ErrorCode::kIoError, "no value");
  return value;
}

Status ReturnIfError(ErrorCode first, int* reached) {
  DS_RETURN_IF_ERROR(CountedStatus(first));
  *reached = 1;
  DS_RETURN_IF_ERROR(CountedStatus(ErrorCode::kInternal));
  *reached = 2;
  return Status::Ok();
}

Result<int> AssignOrReturnTwice(bool first_ok, bool second_ok) {
  DS_ASSIGN_OR_RETURN(int a, CountedResult(first_ok, 20));
  DS_ASSIGN_OR_RETURN(const int b, CountedResult(second_ok, 22));
  return a + b;
}

TEST(StatusMacrosTest, ReturnIfErrorStopsAtFirstError) {
  g_evaluations = 0;
  int reached = 0;
  Status s = ReturnIfError(ErrorCode::kPatchTruncated, &reached);
  EXPECT_EQ(s.code(), ErrorCode::kPatchTruncated);
  EXPECT_EQ(reached, 0);
  EXPECT_EQ(g_evaluations, 1) << "the expression must be evaluated exactly once";
}

TEST(StatusMacrosTest, ReturnIfErrorContinuesOnOk) {
  g_evaluations = 0;
  int reached = 0;
  Status s = ReturnIfError(ErrorCode::kOk, &reached);
  EXPECT_EQ(s.code(), ErrorCode::kInternal);
  EXPECT_EQ(reached, 1);
  EXPECT_EQ(g_evaluations, 2);
}

TEST(StatusMacrosTest, AssignOrReturnAssignsValues) {
  g_evaluations = 0;
  Result<int> r = AssignOrReturnTwice(true, true);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, 42);
  EXPECT_EQ(g_evaluations, 2);
}

TEST(StatusMacrosTest, AssignOrReturnPropagatesError) {
  g_evaluations = 0;
  Result<int> r = AssignOrReturnTwice(true, false);
  EXPECT_EQ(r.status().code(), ErrorCode::kIoError);
  EXPECT_EQ(g_evaluations, 2);
  g_evaluations = 0;
  r = AssignOrReturnTwice(false, true);
  EXPECT_EQ(r.status().code(), ErrorCode::kIoError);
  EXPECT_EQ(g_evaluations, 1) << "the second expression must not run after an error";
}

}  // namespace
}  // namespace ds
