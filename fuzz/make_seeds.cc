// Writes the fuzzers' seed corpora: small real patches in each input layout plus edge cases.
//
//   usage: fuzz_make_seeds OUT_DIR   (writes OUT_DIR/<fuzzer>/seed-*)
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "common/hash.h"
#include "delta/delta.h"
#include "delta/delta_gen.h"
#include "delta/patch_format.h"
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
  cases.push_back({"identical", Random(2000, 10), Random(2000, 10), Small(512, true)});
  cases.push_back({"empty-old", {}, Text(700, 11), Small(256, true)});
  cases.push_back({"empty-new", Random(300, 12), {}, Small(256, true)});
  cases.push_back({"both-empty", {}, {}, Small(256, true)});
  cases.push_back({"one-byte", {0x41}, {0x42}, Small(64, true)});
  return cases;
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
  return 0;
}
