// Micro-benchmarks of the apply path (Google Benchmark): patch application throughput per
// method on synthetic data, and the hashes every byte passes through. The corpus benchmark
// (corpus_bench.py) is the one that compares against peer tools.
#include <benchmark/benchmark.h>

#include <random>

#include "common/hash.h"
#include "delta/delta.h"
#include "delta/delta_gen.h"

namespace {

using ds::Bytes;

// An "executable-like" pair: random bytes, then the new version with 4-byte pointer-like values
// shifted, a few insertions and a few new literal bytes.
void MakePair(size_t size, Bytes* old, Bytes* neu) {
  std::mt19937_64 rng(42);
  old->resize(size);
  for (auto& b : *old) b = static_cast<uint8_t>(rng() % 7 == 0 ? rng() : 0x48);
  *neu = *old;
  for (size_t i = 0; i + 4 < neu->size(); i += 64) (*neu)[i] = static_cast<uint8_t>((*neu)[i] + 16);
  for (int k = 0; k < 16; ++k) {
    const size_t at = rng() % neu->size();
    Bytes ins(1000 + rng() % 5000);
    for (auto& b : ins) b = static_cast<uint8_t>(rng());
    neu->insert(neu->begin() + static_cast<long>(at), ins.begin(), ins.end());
  }
}

void BM_ApplyCopyDiff(benchmark::State& state) {
  Bytes old, neu;
  MakePair(static_cast<size_t>(state.range(0)) << 20, &old, &neu);
  ds::delta::GenerateOptions opt;
  opt.try_zstd_ref = false;
  auto patch = ds::delta::GeneratePatch(old, neu, opt);
  if (!patch.ok()) {
    state.SkipWithError(patch.status().ToString().c_str());
    return;
  }
  for (auto _ : state) {
    auto out = ds::delta::ApplyPatch(old, *patch);
    benchmark::DoNotOptimize(out);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * neu.size()));
  state.counters["patch_bytes"] = static_cast<double>(patch->size());
}
BENCHMARK(BM_ApplyCopyDiff)->Arg(16)->Arg(64)->Unit(benchmark::kMillisecond);

void BM_Sha256(benchmark::State& state) {
  Bytes data(16 << 20, 0x5a);
  for (auto _ : state) benchmark::DoNotOptimize(ds::Sha256::Of(data));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * data.size()));
}
BENCHMARK(BM_Sha256);

void BM_Crc32c(benchmark::State& state) {
  Bytes data(16 << 20, 0x5a);
  for (auto _ : state) benchmark::DoNotOptimize(ds::Crc32c(data));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * data.size()));
}
BENCHMARK(BM_Crc32c);

}  // namespace

BENCHMARK_MAIN();
