// Fuzzes xz replay forms (src/delta/lzma_replay.h) from both ends.
//
// The first input byte picks the side. 0 (even): the rest is read as an .xz stream. Properties:
// XzToReplayForm fails with kInvalidArgument / kResourceLimit or returns a form within the bound
// from which XzFromReplayForm rebuilds exactly the bytes the stream occupied (compared as it goes
// and as a whole), whose content is what liblzma decodes from those bytes. 1 (odd): the rest,
// after the form's magic and version, is read as a replay form. Properties: XzFromReplayForm
// fails with kPatchMalformed or returns a stream; given that stream as the expected one, it
// succeeds again; ReplayFormSections, ForEachReplayToken and ReplayFormContent never crash.
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "delta/lzma_replay.h"
#include "delta/xz_rebuild.h"
#include "fuzz_util.h"

namespace {

constexpr uint64_t kCap = 16 << 20;

void FuzzStream(ds::ByteView input) {
  ds::Result<ds::delta::ReplayForm> f = ds::delta::XzToReplayForm(input, kCap);
  if (!f.ok()) {
    FUZZ_CHECK(f.status().code() == ds::ErrorCode::kInvalidArgument ||
               f.status().code() == ds::ErrorCode::kResourceLimit);
    return;
  }
  FUZZ_CHECK(f->stream_size <= input.size() && f->form.size() <= kCap);
  const ds::ByteView stream = input.first(f->stream_size);
  ds::Result<ds::Bytes> back = ds::delta::XzFromReplayForm(f->form);
  FUZZ_CHECK(back.ok() && back->size() == stream.size() &&
             std::equal(back->begin(), back->end(), stream.begin()));
  FUZZ_CHECK(ds::delta::XzFromReplayForm(f->form, stream).ok());
  ds::Result<ds::Bytes> content = ds::delta::ReplayFormContent(f->form);
  FUZZ_CHECK(content.ok() && *content == f->content);
  uint64_t consumed = 0;
  ds::Result<ds::Bytes> lz = ds::delta::XzDecode(stream, kCap, &consumed);
  FUZZ_CHECK(lz.ok() && consumed == stream.size() && *lz == f->content);
  FUZZ_CHECK(ds::delta::ForEachReplayToken(f->form, [](const ds::delta::ReplayToken&) {}).ok());
}

void FuzzForm(ds::ByteView input) {
  ds::Bytes form = {'D', 'S', 'X', 'R', ds::delta::kReplayFormVersion};
  form.insert(form.end(), input.begin(), input.end());
  ds::Result<ds::Bytes> out = ds::delta::XzFromReplayForm(form);
  (void)ds::delta::ReplayFormSections(form);
  (void)ds::delta::ForEachReplayToken(form, [](const ds::delta::ReplayToken&) {});
  (void)ds::delta::ReplayFormContent(form);
  if (!out.ok()) {
    FUZZ_CHECK(out.status().code() == ds::ErrorCode::kPatchMalformed);
    return;
  }
  FUZZ_CHECK(ds::delta::XzFromReplayForm(form, *out).ok());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const ds::ByteView rest(data + 1, size - 1);
  if (data[0] & 1) {
    FuzzForm(rest);
  } else {
    FuzzStream(rest);
  }
  return 0;
}
