// Writes the fuzzers' seed corpora: small real patches in each input layout plus edge cases.
// The VCDIFF seeds include patches made by the real xdelta3 (/usr/bin/xdelta3; skipped with a
// warning when it is missing) and hand-made ones for features xdelta3 never writes.
//
//   usage: fuzz_make_seeds OUT_DIR   (writes OUT_DIR/<fuzzer>/seed-*)
#include <lzma.h>
#include <zlib.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "common/hash.h"
#include "delta/delta.h"
#include "delta/delta_gen.h"
#include "delta/lzma_replay.h"
#include "delta/patch_format.h"
#include "delta/vcdiff.h"
#include "delta/vcdiff_format.h"
#include "fec_fuzz_util.h"
#include "fuzz_util.h"

namespace {

using ds::Bytes;
using ds::ByteView;

Bytes Random(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Bytes b(n);
  for (auto& x : b) x = static_cast<uint8_t>(rng());
  return b;
}

Bytes Text(size_t n, uint64_t seed) {
  static const char* kWords[] = {"apply", "patch", "segment", "old", "new", "copy", "the", "a"};
  std::mt19937_64 rng(seed);
  std::string s;
  while (s.size() < n) s += std::string(kWords[rng() % 8]) + ((rng() % 6) ? " " : "\n");
  s.resize(n);
  return Bytes(s.begin(), s.end());
}

void Write(const std::filesystem::path& dir, const std::string& name, ByteView data) {
  std::filesystem::create_directories(dir);
  std::ofstream f(dir / name, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  if (!f) {
    std::fprintf(stderr, "cannot write %s\n", (dir / name).c_str());
    std::exit(1);
  }
}

struct Case {
  std::string name;
  Bytes old_bytes, new_bytes;
  ds::delta::GenerateOptions options;
};

ds::delta::GenerateOptions Small(uint64_t segment_size, bool ref) {
  ds::delta::GenerateOptions o;
  o.segment_size = segment_size;
  o.whole_file_limit = 0;
  o.segment_ref_window = 2048;
  o.stream_level = 3;
  o.ref_level = 3;
  o.try_zstd_ref = ref;
  o.threads = 1;
  return o;
}

// A gzip member of |data| written by zlib.
Bytes Gzip(ByteView data) {
  z_stream z{};
  if (deflateInit2(&z, 6, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY) != Z_OK) std::exit(1);
  Bytes out(deflateBound(&z, data.size()) + 64);
  z.next_in = const_cast<Bytef*>(data.data());
  z.avail_in = static_cast<uInt>(data.size());
  z.next_out = out.data();
  z.avail_out = static_cast<uInt>(out.size());
  if (deflate(&z, Z_FINISH) != Z_STREAM_END) std::exit(1);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

// A ustar archive with one gzip'd file (an xz replay form holds it as a puff) and a plain one.
Bytes TarWithGzip() {
  Bytes tar;
  auto member = [&](const char* name, const Bytes& data) {
    uint8_t h[512] = {};
    std::snprintf(reinterpret_cast<char*>(h), 100, "%s", name);
    std::snprintf(reinterpret_cast<char*>(h + 100), 8, "%07o", 0644);
    std::snprintf(reinterpret_cast<char*>(h + 124), 12, "%011o",
                  static_cast<unsigned>(data.size()));
    h[156] = '0';
    std::memcpy(h + 257, "ustar", 6);
    std::memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (uint8_t b : h) sum += b;
    std::snprintf(reinterpret_cast<char*>(h + 148), 8, "%06o", sum);
    tar.insert(tar.end(), h, h + 512);
    tar.insert(tar.end(), data.begin(), data.end());
    tar.resize((tar.size() + 511) / 512 * 512);
  };
  member("doc/changelog.gz", Gzip(Text(3000, 33)));
  member("lib/data.bin", Random(700, 34));
  tar.resize(tar.size() + 1024);
  return tar;
}

// An .xz stream of |data| at preset 1 (a small encoder, within the fuzzers' limits).
Bytes Xz(ByteView data) {
  Bytes out(lzma_stream_buffer_bound(data.size()));
  size_t pos = 0;
  if (lzma_easy_buffer_encode(1, LZMA_CHECK_CRC32, nullptr, data.data(), data.size(), out.data(),
                              &pos, out.size()) != LZMA_OK) {
    std::exit(1);
  }
  out.resize(pos);
  return out;
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  // Mixed: text (reference segments), random with flips (copydiff), fresh bytes (stored).
  {
    Case c{"mixed", {}, {}, Small(512, true)};
    const Bytes r = Random(1024, 2);
    c.old_bytes = Text(2048, 1);
    c.old_bytes.insert(c.old_bytes.end(), r.begin(), r.end());
    c.new_bytes = Text(1024, 3);
    c.new_bytes.insert(c.new_bytes.end(), r.begin(), r.end());
    c.new_bytes[1500] ^= 1;
    const Bytes fresh = Random(512, 4);
    c.new_bytes.insert(c.new_bytes.end(), fresh.begin(), fresh.end());
    cases.push_back(c);
  }
  {
    Case c{"insertions", Random(3000, 5), {}, Small(1024, false)};
    c.new_bytes = c.old_bytes;
    const Bytes ins = Random(40, 6);
    c.new_bytes.insert(c.new_bytes.begin() + 700, ins.begin(), ins.end());
    c.new_bytes.erase(c.new_bytes.begin() + 2000, c.new_bytes.begin() + 2100);
    cases.push_back(c);
  }
  {
    Case c{"whole-file", Text(1500, 7), Text(1600, 8), Small(4096, true)};
    c.options.whole_file_limit = 1 << 20;
    cases.push_back(c);
  }
  {
    Case c{"pointer-shift", Random(2048, 9), {}, Small(256, false)};
    c.new_bytes = c.old_bytes;
    for (size_t i = 0; i + 4 <= c.new_bytes.size(); i += 16) c.new_bytes[i] += 0x10;
    cases.push_back(c);
  }
  {
    // Gzip'd text with an edit: the deflate transform (DSPF 1.2).
    Bytes text = Text(6000, 13);
    Case c{"gzip", Gzip(text), {}, Small(1 << 20, false)};
    text.insert(text.begin() + 3000, text.begin() + 10, text.begin() + 50);
    c.new_bytes = Gzip(text);
    cases.push_back(c);
  }
  {
    // An .xz file with an edit: the xz transform (DSPF 1.2).
    Bytes text = Text(6000, 14);
    Case c{"xz", Xz(text), {}, Small(1 << 20, false)};
    text.insert(text.begin() + 2000, text.begin() + 10, text.begin() + 60);
    c.new_bytes = Xz(text);
    cases.push_back(c);
  }
  {
    // The same with the stream rebuilt by liblzma (transform xz) instead of its replay form.
    Bytes text = Text(6000, 14);
    Case c{"xz-liblzma", Xz(text), {}, Small(1 << 20, false)};
    c.options.max_encoder_memory = 128ull << 20;
    text.insert(text.begin() + 2000, text.begin() + 10, text.begin() + 60);
    c.new_bytes = Xz(text);
    cases.push_back(c);
  }
  cases.push_back({"identical", Random(2000, 10), Random(2000, 10), Small(512, true)});
  cases.push_back({"empty-old", {}, Text(700, 11), Small(256, true)});
  cases.push_back({"empty-new", Random(300, 12), {}, Small(256, true)});
  cases.push_back({"both-empty", {}, {}, Small(256, true)});
  cases.push_back({"one-byte", {0x41}, {0x42}, Small(64, true)});
  return cases;
}

// --- VCDIFF seeds -------------------------------------------------------------------------------

Bytes ReadAll(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  return Bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// `xdelta3 -e -f FLAGS [-s old] new out`; empty when xdelta3 fails or is missing.
Bytes Xdelta3(const Bytes* old_bytes, const Bytes& new_bytes, const std::string& flags) {
  const auto dir = std::filesystem::temp_directory_path() / "ds_make_seeds_xdelta3";
  std::filesystem::create_directories(dir);
  Write(dir, "new", new_bytes);
  std::string cmd = "/usr/bin/xdelta3 -e -f " + flags;
  if (old_bytes != nullptr) {
    Write(dir, "old", *old_bytes);
    cmd += " -s " + (dir / "old").string();
  }
  cmd += " " + (dir / "new").string() + " " + (dir / "out").string() + " 2>/dev/null";
  Bytes out;
  if (std::system(cmd.c_str()) == 0) out = ReadAll(dir / "out");
  std::filesystem::remove_all(dir);
  return out;
}

void PutInt(Bytes* out, uint64_t v) { ds::delta::vcdiff::WriteInt(out, v); }

// One window: [indicator][segment][delta length][target length][0][lengths][adler][sections].
Bytes Window(uint8_t indicator, uint64_t seg_len, uint64_t seg_off, ByteView target,
             const Bytes& data, const Bytes& inst, const Bytes& addr, bool adler = true,
             uint32_t adler_xor = 0) {
  Bytes body;
  PutInt(&body, target.size());
  body.push_back(0);
  PutInt(&body, data.size());
  PutInt(&body, inst.size());
  PutInt(&body, addr.size());
  if (adler) {
    const uint32_t a = ds::delta::vcdiff::Adler32(1, target) ^ adler_xor;
    for (int s = 24; s >= 0; s -= 8) body.push_back(static_cast<uint8_t>(a >> s));
  }
  body.insert(body.end(), data.begin(), data.end());
  body.insert(body.end(), inst.begin(), inst.end());
  body.insert(body.end(), addr.begin(), addr.end());
  Bytes out = {static_cast<uint8_t>(indicator | (adler ? ds::delta::vcdiff::kWinAdler32 : 0))};
  if (indicator & 3) {
    PutInt(&out, seg_len);
    PutInt(&out, seg_off);
  }
  PutInt(&out, body.size());
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

void WriteVcdiffSeeds(const std::filesystem::path& dir) {
  using ds::fuzz::kApplyTightLimits;
  using ds::fuzz::MakeApplyInput;
  // The no-old-file flag of vcdiff_apply_fuzzer.cc.
  constexpr uint8_t kNoSource = 1 << 2;
  std::vector<std::pair<std::string, Bytes>> seeds;  // name -> fuzzer input
  auto add = [&](const std::string& name, uint8_t flags, uint8_t seed, const Bytes& old_bytes,
                 const Bytes& patch) {
    if (patch.empty()) {
      std::fprintf(stderr, "warning: no VCDIFF seed %s (xdelta3 missing?)\n", name.c_str());
      return;
    }
    seeds.push_back({name, MakeApplyInput(flags, seed, old_bytes, patch)});
  };

  // Made by xdelta3.
  const Bytes old_bytes = Random(3000, 30);
  Bytes edited(old_bytes.begin(), old_bytes.begin() + 1200);
  const Bytes fresh = Text(700, 31);
  edited.insert(edited.end(), fresh.begin(), fresh.end());
  edited.insert(edited.end(), old_bytes.begin() + 2000, old_bytes.end());
  edited.insert(edited.end(), old_bytes.begin() + 100, old_bytes.begin() + 600);
  const Bytes text_old = Text(4000, 32);
  Bytes text_new = Text(1500, 33);
  text_new.insert(text_new.end(), text_old.begin() + 500, text_old.end());
  add("seed-xdelta3-none", 0, 5, old_bytes, Xdelta3(&old_bytes, edited, "-S none"));
  add("seed-xdelta3-nochecksum", 0, 6, old_bytes, Xdelta3(&old_bytes, edited, "-S none -n"));
  add("seed-xdelta3-lzma", 0, 7, text_old, Xdelta3(&text_old, text_new, "-S lzma"));
  add("seed-xdelta3-djw", 0, 8, text_old, Xdelta3(&text_old, Text(3000, 34), "-S djw"));
  add("seed-xdelta3-nosource", kNoSource, 9, {}, Xdelta3(nullptr, text_new, "-S none"));
  add("seed-xdelta3-empty-new", 0, 10, old_bytes, Xdelta3(&old_bytes, {}, "-S none"));
  add("seed-xdelta3-tight-limits", kApplyTightLimits, 11, old_bytes,
      Xdelta3(&old_bytes, edited, "-S none"));

  // Hand-made: VCD_TARGET, RUN, overlapping COPY, every address mode.
  {
    const Bytes src = Random(1024, 35);
    Bytes inst, addr, data, target;
    // COPY 16 from 0 (self), from 10 (here), 12 (near 0), 13 (near 1), 10 (same group 0).
    const uint8_t modes[] = {0, 1, 2, 3, 6};
    const uint64_t values[] = {0, 1024 + 16 - 10, 12, 3, 10};
    const uint64_t addrs[] = {0, 10, 12, 13, 10};
    for (int i = 0; i < 5; ++i) {
      inst.push_back(static_cast<uint8_t>(19 + 16 * modes[i]));
      PutInt(&inst, 16);
      if (modes[i] == 6) {
        addr.push_back(static_cast<uint8_t>(values[i]));
      } else {
        PutInt(&addr, values[i]);
      }
      target.insert(target.end(), src.begin() + addrs[i], src.begin() + addrs[i] + 16);
    }
    inst.push_back(0);  // RUN 9 of 'r'.
    PutInt(&inst, 9);
    data.push_back('r');
    target.insert(target.end(), 9, 'r');
    inst.push_back(19);  // COPY 20 from 3 bytes back: overlaps its own output.
    PutInt(&inst, 20);
    PutInt(&addr, 1024 + target.size() - 3);
    for (int k = 0; k < 20; ++k) target.push_back(target[target.size() - 3]);
    Bytes patch(ds::delta::vcdiff::kMagic.begin(), ds::delta::vcdiff::kMagic.end());
    patch.push_back(0);
    const Bytes w1 = Window(ds::delta::vcdiff::kWinSource, src.size(), 0, target, data, inst, addr);
    patch.insert(patch.end(), w1.begin(), w1.end());
    // Window 2 copies 40 bytes of window 1's output (VCD_TARGET), then 8 more overlapping.
    Bytes t2(target.begin() + 10, target.begin() + 50);
    for (int k = 0; k < 8; ++k) t2.push_back(t2[t2.size() - 5]);
    Bytes i2 = {19}, a2;
    PutInt(&i2, 40);
    PutInt(&a2, 0);
    i2.push_back(19 + 16);  // Here mode.
    PutInt(&i2, 8);
    PutInt(&a2, 5);
    const Bytes w2 = Window(ds::delta::vcdiff::kWinTarget, 40, 10, t2, {}, i2, a2);
    patch.insert(patch.end(), w2.begin(), w2.end());
    add("seed-crafted-modes-target", 0, 12, src, patch);
    Bytes bad_adler(patch.begin(), patch.begin() + 5);
    const Bytes w1_bad =
        Window(ds::delta::vcdiff::kWinSource, src.size(), 0, target, data, inst, addr, true, 4);
    bad_adler.insert(bad_adler.end(), w1_bad.begin(), w1_bad.end());
    add("seed-crafted-bad-adler", 0, 13, src, bad_adler);
  }
  // Hand-made: an application-defined code table (ADD 1 and COPY mode 0 swapped, caches near 2
  // and same 1) delivered as one ADD of the whole 1536-byte string.
  {
    ds::delta::vcdiff::CodeTable table = ds::delta::vcdiff::DefaultCodeTable();
    std::swap(table[2], table[19]);
    const Bytes str = ds::delta::vcdiff::CodeTableToBytes(table);
    Bytes ti = {1};
    PutInt(&ti, str.size());
    const Bytes table_window = Window(0, 0, 0, str, str, ti, {}, false);
    Bytes patch(ds::delta::vcdiff::kMagic.begin(), ds::delta::vcdiff::kMagic.end());
    patch.push_back(ds::delta::vcdiff::kHdrCodeTable);
    PutInt(&patch, table_window.size() + 2);
    patch.push_back(2);
    patch.push_back(1);
    patch.insert(patch.end(), table_window.begin(), table_window.end());
    const Bytes src = Text(200, 36);
    Bytes target(src.begin() + 20, src.begin() + 70);
    target.push_back('!');
    Bytes inst = {2}, addr;  // Opcode 2: COPY mode 0, explicit size.
    PutInt(&inst, 50);
    PutInt(&addr, 20);
    inst.push_back(19);  // Opcode 19: ADD 1.
    const Bytes w = Window(ds::delta::vcdiff::kWinSource, src.size(), 0, target, {'!'}, inst, addr);
    patch.insert(patch.end(), w.begin(), w.end());
    add("seed-crafted-code-table", 0, 14, src, patch);
  }
  // Framing edge cases.
  add("edge-magic", 0, 0, {}, Bytes{0xD6, 0xC3, 0xC4, 0x00});
  add("edge-header-only", 0, 0, {}, Bytes{0xD6, 0xC3, 0xC4, 0x00, 0x00});
  add("edge-version1", 0, 0, {}, Bytes{0xD6, 0xC3, 0xC4, 0x01, 0x00});

  for (const auto& [name, input] : seeds) {
    // Every seed but the deliberately broken ones decodes (a check that the seeds are useful).
    ds::fuzz::ApplyInput in;
    ds::fuzz::ParseApplyInput(input, &in);
    const ds::Result<Bytes> r = ds::delta::ApplyVcdiff(in.old_bytes, in.patch);
    std::printf("%-28s input %5zu  %s\n", name.c_str(), input.size(),
                r.ok() ? "decodes" : r.status().ToString().c_str());
    Write(dir, name, input);
  }
}

// UDP carrier seeds (fec_packet_fuzzer, fec_receiver_fuzzer): one body of each packet type, a
// sealed datagram, and a whole session recorded from a real UdpSender (with losses, so the
// receiver decodes from repair symbols), a replay and a forgery.
void WriteFecSeeds(const std::filesystem::path& out) {
  namespace fec = ds::fec;
  const auto packet_dir = out / "fec_packet_fuzzer";
  static const Bytes symbol(300, 0x3C);
  fec::Data data;
  data.block = 2;
  data.chunks = 1;
  data.k = 4;
  data.esi = 5;
  data.planned = 6;
  data.rtt_hint_us = 40000;
  data.symbol = symbol;
  fec::Feedback fb;
  fb.largest_pn = 500;
  fb.received_packets = 480;
  fb.received_bytes = 480 * 1200;
  fb.loss_ppm = 40000;
  fb.window_end = 64;
  fb.blocks = {{10, 50}, {12, 3}};
  fb.samples = {{490, 1000000}, {499, 1002000}};
  fec::BlockAck ack;
  ack.done_below = 10;
  ack.done = {12, 14};
  ack.need_more = {{16, 3}};
  fec::Challenge ch;
  ch.cookie.fill(0x11);
  ch.hello_pn = 1;
  fec::Echo echo;
  echo.cookie.fill(0x11);
  echo.window_end = 256;
  const std::pair<const char*, Bytes> bodies[] = {
      {"hello", fec::SerializeHello(fec::Hello{"token", 16})},
      {"challenge", fec::SerializeChallenge(ch)},
      {"echo", fec::SerializeEcho(echo)},
      {"data", fec::SerializeData(data)},
      {"feedback", fec::SerializeFeedback(fb)},
      {"block-ack", fec::SerializeBlockAck(ack)},
      {"close", fec::SerializeClose(fec::Close{0})}};
  fec::SessionKey key;
  for (size_t i = 0; i < key.size(); ++i) key[i] = static_cast<uint8_t>(i);
  for (size_t t = 0; t < std::size(bodies); ++t) {
    Bytes in = {static_cast<uint8_t>(t + 1)};
    in.insert(in.end(), bodies[t].second.begin(), bodies[t].second.end());
    Write(packet_dir, std::string("seed-") + bodies[t].first, in);
    const Bytes dg = fec::SealDatagram(
        fec::Header{static_cast<fec::PacketType>(t + 1), 77, 1000 + t}, bodies[t].second, key);
    Bytes sealed = {0};
    sealed.insert(sealed.end(), dg.begin(), dg.end());
    Write(packet_dir, std::string("seed-sealed-") + bodies[t].first, sealed);
  }

  // A session: CHALLENGE, then what a real sender sends for the fuzz object, every 4th DATA
  // lost, the sender fed with the receiver's real answers.
  const auto recv_dir = out / "fec_receiver_fuzzer";
  const Bytes object = ds::fuzz::FecFuzzObject();
  const auto chunks = ds::fuzz::FecFuzzChunks(object);
  const fec::SessionParams params = ds::fuzz::FecFuzzParams();
  auto sender = fec::UdpSender::Create(params, chunks, [&](uint64_t off, std::span<uint8_t> o) {
                  std::copy_n(object.begin() + off, o.size(), o.begin());
                  return ds::Status::Ok();
                }).value();
  Bytes got;
  fec::ReceiverConfig rconfig;
  rconfig.window_chunks = 2;  // As in the fuzzer.
  auto receiver = fec::UdpReceiver::Create(
                      params, chunks,
                      [&](uint64_t, uint64_t, ByteView b) {
                        got.insert(got.end(), b.begin(), b.end());
                        return ds::Status::Ok();
                      },
                      rconfig)
                      .value();
  Bytes session, with_replay;
  uint64_t last_pn = 0;
  int data_count = 0;
  for (fec::Micros now = 0; now < 2'000'000 && !receiver->done(); now += 1000) {
    while (auto d = receiver->Poll(now)) (void)sender->OnDatagram(now, *d, "agent");
    while (auto d = sender->Poll(now)) {
      ds::Result<fec::Opened> o = fec::OpenDatagram(d->bytes, params.session_id, params.key);
      if (!o.ok()) continue;
      if (o->header.type == fec::PacketType::kData && ++data_count % 4 == 0) continue;
      const uint64_t step = o->header.packet_number - last_pn;
      last_pn = o->header.packet_number;
      ds::fuzz::AppendFecRecord(&session, 1, static_cast<uint8_t>(std::min<uint64_t>(step, 255)),
                                static_cast<uint8_t>(o->header.type), o->body);
      (void)receiver->OnDatagram(now, d->bytes);
    }
  }
  std::printf("fec session seed: %zu bytes, receiver %s\n", session.size(),
              receiver->done() ? "done" : "NOT done");
  Write(recv_dir, "seed-session", session);
  with_replay = session;
  // A replay of the last record (packet number step 0) and a forgery (wrong key).
  ds::fuzz::AppendFecRecord(&with_replay, 1, 0, 4, fec::SerializeData(data));
  ds::fuzz::AppendFecRecord(&with_replay, 1, 1, 200, fec::SerializeData(data));
  ds::fuzz::AppendFecRecord(&with_replay, 1, 1, 7, fec::SerializeClose(fec::Close{59}));
  Write(recv_dir, "seed-session-replay-forgery-close", with_replay);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  const std::filesystem::path out(argv[1]);
  const auto apply_dir = out / "patch_apply_fuzzer";
  const auto inspect_dir = out / "patch_inspect_fuzzer";
  const auto roundtrip_dir = out / "delta_roundtrip_fuzzer";
  using ds::fuzz::kApplyTightLimits;
  using ds::fuzz::kApplyVerifyOldHash;

  for (const Case& c : Cases()) {
    ds::Result<Bytes> patch = ds::delta::GeneratePatch(c.old_bytes, c.new_bytes, c.options);
    if (!patch.ok()) {
      std::fprintf(stderr, "%s: %s\n", c.name.c_str(), patch.status().ToString().c_str());
      return 1;
    }
    ds::Result<Bytes> check = ds::delta::ApplyPatch(c.old_bytes, *patch);
    if (!check.ok() || *check != c.new_bytes) {
      std::fprintf(stderr, "%s: patch does not apply\n", c.name.c_str());
      return 1;
    }
    Write(inspect_dir, "seed-" + c.name, *patch);
    Write(apply_dir, "seed-" + c.name,
          ds::fuzz::MakeApplyInput(kApplyVerifyOldHash, 7, c.old_bytes, *patch));
    Write(apply_dir, "seed-" + c.name + "-nohash",
          ds::fuzz::MakeApplyInput(0, 200, c.old_bytes, *patch));
    Write(
        roundtrip_dir, "seed-" + c.name,
        ds::fuzz::MakeRoundTripInput(0x02 | ds::fuzz::kRoundTripZstdRef, c.old_bytes, c.new_bytes));
    std::printf("%-14s old %5zu new %5zu patch %5zu\n", c.name.c_str(), c.old_bytes.size(),
                c.new_bytes.size(), patch->size());
    if (c.name == "mixed") {
      Write(apply_dir, "seed-mixed-tight-limits",
            ds::fuzz::MakeApplyInput(kApplyTightLimits, 3, c.old_bytes, *patch));
      Bytes wrong_base = c.old_bytes;
      wrong_base[10] ^= 1;
      Write(apply_dir, "seed-mixed-wrong-base",
            ds::fuzz::MakeApplyInput(kApplyVerifyOldHash, 1, wrong_base, *patch));
      Bytes truncated(patch->begin(), patch->end() - 5);
      Write(apply_dir, "seed-mixed-truncated",
            ds::fuzz::MakeApplyInput(0, 9, c.old_bytes, truncated));
      Write(inspect_dir, "seed-mixed-truncated", truncated);
      Bytes trailing = *patch;
      trailing.push_back(0);
      Write(inspect_dir, "seed-mixed-trailing", trailing);
    }
  }

  // xz replay forms: streams (first byte 0) and their forms (first byte 1, without magic and
  // version): text, incompressible bytes (uncompressed LZMA2 chunks), several blocks, no content.
  {
    const auto replay_dir = out / "lzma_replay_fuzzer";
    Bytes mixed = Text(3000, 30);
    const Bytes noise = Random(1500, 31);
    mixed.insert(mixed.end(), noise.begin(), noise.end());
    lzma_stream ms = LZMA_STREAM_INIT;
    lzma_mt mt{};
    mt.threads = 1;
    mt.preset = 1;
    mt.block_size = 1024;
    mt.check = LZMA_CHECK_SHA256;
    Bytes blocks(lzma_stream_buffer_bound(mixed.size()) + 4096);
    if (lzma_stream_encoder_mt(&ms, &mt) != LZMA_OK) return 1;
    ms.next_in = mixed.data();
    ms.avail_in = mixed.size();
    ms.next_out = blocks.data();
    ms.avail_out = blocks.size();
    if (lzma_code(&ms, LZMA_FINISH) != LZMA_STREAM_END) return 1;
    blocks.resize(blocks.size() - ms.avail_out);
    lzma_end(&ms);
    for (const auto& [name, stream] :
         std::vector<std::pair<std::string, Bytes>>{{"text", Xz(Text(4000, 32))},
                                                    {"mixed", Xz(mixed)},
                                                    {"blocks", blocks},
                                                    {"empty", Xz({})},
                                                    {"tar-gzip", Xz(TarWithGzip())}}) {
      Bytes in = {0};
      in.insert(in.end(), stream.begin(), stream.end());
      Write(replay_dir, "seed-stream-" + name, in);
      ds::Result<ds::delta::ReplayForm> f = ds::delta::XzToReplayForm(stream, 1 << 20);
      if (!f.ok()) {
        std::fprintf(stderr, "replay %s: %s\n", name.c_str(), f.status().ToString().c_str());
        return 1;
      }
      Bytes form = {1};
      form.insert(form.end(), f->form.begin() + 5, f->form.end());
      Write(replay_dir, "seed-form-" + name, form);
    }
  }

  // Framing edge cases.
  const Bytes magic = {'D', 'S', 'P', 'F'};
  const Bytes version2 = {'D', 'S', 'P', 'F', 2, 0, 4, 0, 0, 0, 0};
  Bytes header_only;
  ds::delta::FileHeader h;
  h.old_sha256 = ds::Sha256::Of({});
  h.new_sha256 = ds::Sha256::Of({});
  ds::delta::WriteFileHeader(h, &header_only);
  for (const auto& [name, bytes] :
       std::vector<std::pair<std::string, Bytes>>{{"edge-empty", {}},
                                                  {"edge-magic", magic},
                                                  {"edge-version2", version2},
                                                  {"edge-header-only", header_only}}) {
    Write(inspect_dir, name, bytes);
    Write(apply_dir, name, ds::fuzz::MakeApplyInput(kApplyVerifyOldHash, 0, {}, bytes));
  }

  // Round trips through edit scripts: copies, inserts, flips, repeats.
  {
    const Bytes old_bytes = Random(1024, 20);
    const Bytes script = {0, 0x10, 0x00, 0xff,       // copy old[16, +256)
                          1, 3,    'a',  'b',  'c',  // insert "abc"
                          2, 0x00, 0x02, 0x7f,       // copy old[512, +128) with a flip
                          3, 0x03, 0x00, 0x3f,       // repeat 64 bytes from 4 back
                          0, 0x00, 0x03, 0xff};      // copy old[768, +256)
    Write(roundtrip_dir, "seed-edit-script",
          ds::fuzz::MakeRoundTripInput(ds::fuzz::kRoundTripEditScript | 0x01, old_bytes, script));
    Write(roundtrip_dir, "seed-edit-script-segmented",
          ds::fuzz::MakeRoundTripInput(ds::fuzz::kRoundTripEditScript |
                                           ds::fuzz::kRoundTripSmallWholeLimit |
                                           ds::fuzz::kRoundTripZstdRef,
                                       old_bytes, script));
    Write(roundtrip_dir, "edge-empty", {});
    Write(roundtrip_dir, "edge-prefix-only", Bytes{0x7f, 0xff, 0xff});
  }

  WriteVcdiffSeeds(out / "vcdiff_apply_fuzzer");
  WriteFecSeeds(out);
  return 0;
}
