// UDP carrier benchmarks (Google Benchmark): Reed-Solomon encode and decode throughput (ISA-L,
// symbols of 1175 bytes as the carrier sends them), datagram sealing/opening, then a table of
// simulated transfers (tests/fec/lossy_channel.h: 20 Mbit/s bottleneck, 50 ms queue, 40 ms RTT)
// at 0/5/10/20 % loss: goodput and repair overhead. Simulated time, so the table is the
// controller's behaviour, not this machine's speed.
//
//   build-XX/bench/fec_bench [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <cstdio>
#include <random>
#include <vector>

#include "fec/fec.h"
#include "tests/fec/lossy_channel.h"

namespace {

using ds::Bytes;
namespace fec = ds::fec;

constexpr size_t kSym = fec::kMaxDatagramSize - fec::kDataOverhead;

struct Block {
  std::vector<Bytes> src;
  std::vector<const uint8_t*> ptrs;
};

Block MakeBlock(int k) {
  std::mt19937_64 rng(k);
  Block b;
  b.src.resize(k, Bytes(kSym));
  for (auto& s : b.src) {
    for (auto& x : s) x = static_cast<uint8_t>(rng());
    b.ptrs.push_back(s.data());
  }
  return b;
}

// Args: K, R. Throughput counts source bytes (K x symbol) per block encoded.
void BM_RsEncode(benchmark::State& state) {
  const int k = static_cast<int>(state.range(0)), r = static_cast<int>(state.range(1));
  fec::ReedSolomon rs;
  Block b = MakeBlock(k);
  std::vector<uint8_t> esis(r);
  for (int i = 0; i < r; ++i) esis[i] = static_cast<uint8_t>(k + i);
  std::vector<Bytes> out(r, Bytes(kSym));
  std::vector<uint8_t*> outp;
  for (auto& o : out) outp.push_back(o.data());
  for (auto _ : state) {
    benchmark::DoNotOptimize(rs.Encode(k, b.ptrs, esis, outp, kSym).ok());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * k * kSym);
}

// Args: K, R. The first R source symbols are lost and rebuilt from the R repair symbols (the
// worst case: the most missing). Throughput counts the K x symbol bytes of the block.
void BM_RsDecode(benchmark::State& state) {
  const int k = static_cast<int>(state.range(0)), r = static_cast<int>(state.range(1));
  fec::ReedSolomon rs;
  Block b = MakeBlock(k);
  std::vector<uint8_t> rid(r);
  for (int i = 0; i < r; ++i) rid[i] = static_cast<uint8_t>(k + i);
  std::vector<Bytes> repair(r, Bytes(kSym));
  std::vector<uint8_t*> rp;
  for (auto& o : repair) rp.push_back(o.data());
  if (!rs.Encode(k, b.ptrs, rid, rp, kSym).ok()) state.SkipWithError("encode");
  std::vector<uint8_t> esis;
  std::vector<const uint8_t*> in;
  for (int i = r; i < k; ++i) {
    esis.push_back(static_cast<uint8_t>(i));
    in.push_back(b.src[i].data());
  }
  for (int i = 0; i < r && static_cast<int>(esis.size()) < k; ++i) {
    esis.push_back(rid[i]);
    in.push_back(repair[i].data());
  }
  std::vector<Bytes> out(k, Bytes(kSym));
  std::vector<uint8_t*> outp;
  for (auto& o : out) outp.push_back(o.data());
  for (auto _ : state) {
    benchmark::DoNotOptimize(rs.Decode(k, esis, in, outp, kSym).ok());
  }
  if (out[0] != b.src[0]) state.SkipWithError("decode mismatch");
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * k * kSym);
}

void BM_SealAndOpenDatagram(benchmark::State& state) {
  fec::SessionKey key{};
  const Bytes body(kSym + 10, 0x11);
  uint64_t pn = 0;
  for (auto _ : state) {
    const Bytes dg = fec::SealDatagram(fec::Header{fec::PacketType::kData, 1, pn++}, body, key);
    benchmark::DoNotOptimize(fec::OpenDatagram(dg, 1, key).ok());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * body.size());
}

BENCHMARK(BM_RsEncode)->Args({55, 8})->Args({110, 16})->Args({200, 30})->Args({200, 54});
BENCHMARK(BM_RsDecode)->Args({55, 8})->Args({110, 16})->Args({200, 30})->Args({200, 54});
BENCHMARK(BM_SealAndOpenDatagram);

void PrintSimulationTable() {
  std::printf(
      "\nSimulated UDP carrier, 16 MiB object, 20 Mbit/s bottleneck, 125 KB queue, "
      "20 ms one way, random loss after the queue\n");
  std::printf("%6s %16s %14s %16s %12s %10s\n", "loss", "goodput Mbit/s", "target Mbit/s",
              "repair (steady)", "need-more", "time s");
  const Bytes object = ds::fec::testing::RandomBytes(16 << 20, 1);
  for (double loss : {0.0, 0.05, 0.10, 0.20}) {
    ds::fec::testing::TransferOptions o;
    o.forward.rate_bps = 20'000'000;
    o.forward.queue_bytes = 125'000;
    o.forward.delay_us = 20'000;
    o.forward.loss = loss;
    o.forward.seed = 7;
    o.reverse.delay_us = 20'000;
    o.reverse.seed = 8;
    const auto r = ds::fec::testing::RunTransfer(object, o);
    const bool ok = r.receiver_done && r.delivered == object;
    std::printf("%5.0f%% %16.2f %14.2f %8.1f%% (%4.1f%%) %12llu %10.2f %s\n", 100 * loss,
                r.goodput_mbps(), 0.85 * 20 * (1 - loss), 100 * r.repair_overhead(),
                100 * r.steady_repair_overhead(),
                static_cast<unsigned long long>(r.sender.need_more_requests), r.finished_us / 1e6,
                ok ? "" : "FAILED");
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  PrintSimulationTable();
  return 0;
}
