// xz replay forms (src/delta/lzma_replay.h): .xz streams made by liblzma at many settings and by
// the real xz tool decode to a form that codes back to exactly the stream, with the content
// liblzma decodes; gzip'd files inside a tar are held as puffs; streams the form cannot hold and
// corrupt streams are refused; hostile forms fail cleanly.
#include "delta/lzma_replay.h"

#include <gtest/gtest.h>
#include <lzma.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "delta/xz_rebuild.h"
#include "support/archive_util.h"
#include "support/test_util.h"

namespace ds::delta {
namespace {

using ds::testing::CodeOf;
using ds::testing::Gzip;
using ds::testing::RandomBytes;
using ds::testing::Tar;
using ds::testing::TempDir;
using ds::testing::TextBytes;

bool Sh(const std::string& cmd) { return std::system(cmd.c_str()) == 0; }

// An .xz stream of |data| through liblzma with |filters| (LZMA2 last).
Bytes Encode(ByteView data, lzma_filter* filters, lzma_check check = LZMA_CHECK_CRC64) {
  Bytes out(lzma_stream_buffer_bound(data.size()));
  size_t pos = 0;
  EXPECT_EQ(lzma_stream_buffer_encode(filters, check, nullptr, data.data(), data.size(), out.data(),
                                      &pos, out.size()),
            LZMA_OK);
  out.resize(pos);
  return out;
}

Bytes EncodeLzma2(ByteView data, const lzma_options_lzma& opt,
                  lzma_check check = LZMA_CHECK_CRC64) {
  lzma_options_lzma o = opt;
  lzma_filter filters[2] = {{LZMA_FILTER_LZMA2, &o}, {LZMA_VLI_UNKNOWN, nullptr}};
  return Encode(data, filters, check);
}

Bytes EncodePreset(ByteView data, uint32_t preset, lzma_check check = LZMA_CHECK_CRC64) {
  lzma_options_lzma opt{};
  EXPECT_FALSE(lzma_lzma_preset(&opt, preset));
  return EncodeLzma2(data, opt, check);
}

// liblzma's multi-threaded encoder with small blocks: several blocks, sizes in the headers.
Bytes EncodeBlocks(ByteView data, uint32_t preset, uint64_t block_size) {
  lzma_stream s = LZMA_STREAM_INIT;
  lzma_mt mt{};
  mt.threads = 2;
  mt.preset = preset;
  mt.block_size = block_size;
  mt.check = LZMA_CHECK_CRC32;
  EXPECT_EQ(lzma_stream_encoder_mt(&s, &mt), LZMA_OK);
  Bytes out(lzma_stream_buffer_bound(data.size()) + (1 << 16));
  s.next_in = data.data();
  s.avail_in = data.size();
  s.next_out = out.data();
  s.avail_out = out.size();
  EXPECT_EQ(lzma_code(&s, LZMA_FINISH), LZMA_STREAM_END);
  out.resize(out.size() - s.avail_out);
  lzma_end(&s);
  return out;
}

// Checks the round trip of |stream| (whose content is |content|) and returns the form.
Bytes ExpectRoundTrip(ByteView stream, ByteView content) {
  Result<ReplayForm> f = XzToReplayForm(stream, uint64_t{1} << 30);
  EXPECT_TRUE(f.ok()) << f.status().ToString();
  if (!f.ok()) return {};
  EXPECT_EQ(f->stream_size, stream.size());
  EXPECT_TRUE(f->content == Bytes(content.begin(), content.end()));
  Result<Bytes> c = ReplayFormContent(f->form);
  EXPECT_TRUE(c.ok() && *c == f->content);
  Result<Bytes> back = XzFromReplayForm(f->form);
  EXPECT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(back.ok() && *back == Bytes(stream.begin(), stream.end()));
  EXPECT_TRUE(XzFromReplayForm(f->form, stream).ok());
  return std::move(f->form);
}

// Text, incompressible bytes (stored as uncompressed LZMA2 chunks), long runs, and a mix that
// spans several LZMA2 chunks (2 MiB of content each at most).
std::vector<std::pair<std::string, Bytes>> Contents() {
  std::vector<std::pair<std::string, Bytes>> out;
  out.emplace_back("text", TextBytes(300000, 1));
  out.emplace_back("random", RandomBytes(200000, 2));
  out.emplace_back("zeros", Bytes(150000, 0));
  Bytes mix = TextBytes(2500000, 3);
  const Bytes noise = RandomBytes(400000, 4);
  std::memcpy(mix.data() + 1000000, noise.data(), noise.size());
  out.emplace_back("mixed 2.5 MB", std::move(mix));
  return out;
}

TEST(LzmaReplay, EveryPresetRoundTrips) {
  for (const auto& [name, content] : Contents()) {
    for (uint32_t preset : {0u, 1u, 3u, 6u, 6u | LZMA_PRESET_EXTREME, 7u}) {
      if (content.size() > 1000000 && preset != 6u) continue;  // Keep the test quick.
      SCOPED_TRACE(name + " preset " + std::to_string(preset & 0xF) +
                   ((preset & LZMA_PRESET_EXTREME) ? "e" : ""));
      ExpectRoundTrip(EncodePreset(content, preset), content);
    }
  }
}

TEST(LzmaReplay, ChecksBlocksAndLiteralSettingsRoundTrip) {
  const Bytes content = TextBytes(400000, 7);
  for (lzma_check check :
       {LZMA_CHECK_NONE, LZMA_CHECK_CRC32, LZMA_CHECK_CRC64, LZMA_CHECK_SHA256}) {
    SCOPED_TRACE("check " + std::to_string(check));
    ExpectRoundTrip(EncodePreset(content, 6, check), content);
  }
  // Several blocks (the multi-threaded encoder, sizes recorded in the block headers).
  ExpectRoundTrip(EncodeBlocks(content, 6, 64 << 10), content);
  // Literal context and position bits other than the defaults, and a dictionary no preset has.
  struct Bits {
    uint32_t lc, lp, pb;
  };
  for (const Bits& b : {Bits{0, 0, 0}, Bits{1, 3, 0}, Bits{4, 0, 4}, Bits{0, 4, 2}}) {
    SCOPED_TRACE("lc " + std::to_string(b.lc) + " lp " + std::to_string(b.lp) + " pb " +
                 std::to_string(b.pb));
    lzma_options_lzma opt{};
    ASSERT_FALSE(lzma_lzma_preset(&opt, 6));
    opt.lc = b.lc;
    opt.lp = b.lp;
    opt.pb = b.pb;
    opt.dict_size = 3u << 20;
    ExpectRoundTrip(EncodeLzma2(content, opt), content);
  }
}

TEST(LzmaReplay, EmptyContentAndTrailingBytes) {
  ExpectRoundTrip(EncodePreset({}, 6), {});
  const Bytes content = TextBytes(10000, 8);
  Bytes stream = EncodePreset(content, 6);
  const size_t size = stream.size();
  stream.insert(stream.end(), {0, 0, 0, 0, 'x', 'y'});
  Result<ReplayForm> f = XzToReplayForm(stream, 1 << 20);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->stream_size, size);
}

TEST(LzmaReplay, RealXzTool) {
  if (!Sh("command -v xz >/dev/null 2>&1")) GTEST_SKIP() << "xz is not installed";
  TempDir dir;
  const Bytes content = TextBytes(1500000, 9);
  ds::testing::WriteFileOrDie(dir.Join("in"), content);
  for (const char* flags : {"-0", "-6", "-9e", "-6 -T2 --block-size=200KiB",
                            "--lzma2=preset=6,lc=1,lp=3,pb=0,nice=200,mf=hc4,mode=fast"}) {
    SCOPED_TRACE(std::string("xz ") + flags);
    ASSERT_TRUE(Sh(std::string("xz -c ") + flags + " " + dir.Join("in") + " > " + dir.Join("x")));
    ExpectRoundTrip(ds::testing::ReadFileOrDie(dir.Join("x")), content);
  }
}

TEST(LzmaReplay, GzipFilesInATarAreHeldAsPuffs) {
  const Bytes gz = Gzip(TextBytes(100000, 10), 9);
  Bytes gz_trailing = Gzip(TextBytes(50000, 11), 9);
  gz_trailing.push_back(0x42);  // Not exactly gzip members: left as bytes.
  const Bytes tar = Tar({{"a.txt", TextBytes(5000, 12)},
                         {"doc/changelog.gz", gz},
                         {"b.gz", gz_trailing},
                         {"c.bin", RandomBytes(3000, 13)}});
  const Bytes form = ExpectRoundTrip(EncodePreset(tar, 6), tar);
  Result<ReplayFormLayout> l = ReplayFormSections(form);
  ASSERT_TRUE(l.ok());
  // One puff (a few bytes per literal and copy) in place of the deflate bytes of changelog.gz.
  EXPECT_GT(l->content_length, tar.size() + gz.size() / 2);
  const Bytes plain_tar = Tar({{"a.txt", TextBytes(5000, 12)}, {"b.gz", gz_trailing}});
  Result<ReplayForm> plain = XzToReplayForm(EncodePreset(plain_tar, 6), 1 << 30);
  ASSERT_TRUE(plain.ok());
  Result<ReplayFormLayout> pl = ReplayFormSections(plain->form);
  ASSERT_TRUE(pl.ok());
  EXPECT_EQ(pl->content_length, plain_tar.size());
}

TEST(LzmaReplay, StreamsTheFormCannotHoldAreRefused) {
  const Bytes content = TextBytes(100000, 14);
  // A BCJ filter before LZMA2.
  lzma_options_lzma opt{};
  ASSERT_FALSE(lzma_lzma_preset(&opt, 6));
  lzma_filter bcj[3] = {
      {LZMA_FILTER_X86, nullptr}, {LZMA_FILTER_LZMA2, &opt}, {LZMA_VLI_UNKNOWN, nullptr}};
  EXPECT_EQ(CodeOf(XzToReplayForm(Encode(content, bcj), 1 << 30)), ErrorCode::kInvalidArgument);
  // Content above the caller's bound.
  const Bytes stream = EncodePreset(content, 6);
  EXPECT_EQ(CodeOf(XzToReplayForm(stream, 50000)), ErrorCode::kResourceLimit);
  // Not .xz at all.
  EXPECT_EQ(CodeOf(XzToReplayForm(content, 1 << 30)), ErrorCode::kInvalidArgument);
}

TEST(LzmaReplay, CorruptStreamsAreRefusedAsLiblzmaRefusesThem) {
  const Bytes content = TextBytes(60000, 15);
  const Bytes stream = EncodePreset(content, 6);
  // Every truncation.
  for (size_t cut = 0; cut < stream.size(); cut += 97) {
    EXPECT_EQ(CodeOf(XzToReplayForm(ByteView(stream).first(cut), 1 << 30)),
              ErrorCode::kInvalidArgument)
        << cut;
  }
  // Bit flips: what the replay decoder accepts, liblzma decodes to the same content (integrity
  // check, CRC32s of headers, index and footer are verified as liblzma does).
  int refused = 0;
  for (size_t at = 0; at < stream.size(); at += 61) {
    Bytes bad = stream;
    bad[at] ^= 0x10;
    Result<ReplayForm> f = XzToReplayForm(bad, 1 << 30);
    Result<Bytes> lz = XzDecode(bad, 1 << 30);
    if (!f.ok()) {
      ++refused;
      EXPECT_EQ(f.status().code(), ErrorCode::kInvalidArgument);
      continue;
    }
    ASSERT_TRUE(lz.ok()) << at;
    EXPECT_TRUE(f->content == *lz) << at;
  }
  EXPECT_GT(refused, 0);
}

TEST(LzmaReplay, HostileFormsFailCleanly) {
  const Bytes content = TextBytes(80000, 16);
  const Bytes stream = EncodePreset(content, 6);
  const Bytes form = ExpectRoundTrip(stream, content);
  // Every truncation is malformed.
  for (size_t cut = 0; cut < form.size(); cut += 37) {
    EXPECT_EQ(CodeOf(XzFromReplayForm(ByteView(form).first(cut))), ErrorCode::kPatchMalformed)
        << cut;
  }
  // Changed bytes: refused, or coded into some other stream (the applier checks what it
  // rebuilds); with the expected stream given, never accepted unless it is that stream.
  const Bytes noise = RandomBytes(400, 17);
  for (size_t k = 0; k < 200; ++k) {
    Bytes bad = form;
    const size_t at = (noise[2 * k] | noise[2 * k + 1] << 8) * bad.size() / 65536;
    bad[at] ^= static_cast<uint8_t>(noise[k] | 1);
    Result<Bytes> out = XzFromReplayForm(bad);
    if (!out.ok()) {
      EXPECT_EQ(out.status().code(), ErrorCode::kPatchMalformed) << at;
      continue;
    }
    Result<Bytes> checked = XzFromReplayForm(bad, stream);
    if (*out == stream) {
      EXPECT_TRUE(checked.ok()) << at;
    } else {
      EXPECT_EQ(CodeOf(checked), ErrorCode::kPatchOutputMismatch) << at;
    }
  }
  // Another stream expected.
  const Bytes other = EncodePreset(TextBytes(80000, 18), 6);
  EXPECT_EQ(CodeOf(XzFromReplayForm(form, other)), ErrorCode::kPatchOutputMismatch);
}

}  // namespace
}  // namespace ds::delta
