// The whole-model kernels that must agree with the CPU cache bit for bit
// (backends/cuda/cuda_model_kernels.h): latent rows encoded on the GPU == cache::encode_row
// (codes, packing, scale, zero) for every storage, and GPU decoding == cache::decode_row.
// Skips without a GPU.
#include "backends/cuda/cuda_model_kernels.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backends/cuda/cuda_allocator.h"
#include "backends/cuda/cuda_device.h"
#include "cache/latent_packing.h"

namespace palu::backends::cuda {
namespace {

TEST(CudaModelKernels, LatentEncodeDecodeMatchTheCpuCodec) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: no GPU or no driver visible";
  CudaAllocator a(0);
  for (int rank : {32, 96, 128, 100}) {
    const int T = 37, ld = rank + 5;
    std::mt19937 rng(rank);
    std::normal_distribution<float> dist(0.f, 2.f);
    std::vector<float> z((size_t)T * ld);
    for (auto& x : z) x = dist(rng);
    for (int i = 0; i < rank; ++i) z[(size_t)5 * ld + i] = 0.75f;  // a constant row: scale 0
    for (RowStorage st : {RowStorage::kF32, RowStorage::kF16, RowStorage::kBF16, RowStorage::kQ8,
                          RowStorage::kQ4, RowStorage::kQ3, RowStorage::kQ2}) {
      const size_t rb = row_storage_bytes(st, rank);
      auto dz = CudaBuffer::make(&a, z.size() * 4);
      auto rows = CudaBuffer::make(&a, rb * (T + 3));
      auto sc = CudaBuffer::make(&a, (T + 3) * 4);
      auto zr = CudaBuffer::make(&a, (T + 3) * 4);
      auto out = CudaBuffer::make(&a, (size_t)T * rank * 4);
      ASSERT_TRUE(dz.is_ok() && rows.is_ok() && sc.is_ok() && zr.is_ok() && out.is_ok());
      ASSERT_TRUE(dz->upload(z.data(), z.size() * 4).is_ok());
      ASSERT_TRUE(rows->fill_zero().is_ok());
      // Rows land at t0 = 3 (a sequence that already holds 3 tokens).
      Status s = detail::encode_latent_rows(dz->as<float>(), ld, T, rank, st, rows->as<uint8_t>(),
                                            rb, sc->as<float>(), zr->as<float>(), 3, nullptr);
      ASSERT_TRUE(s.is_ok()) << s.to_string();
      std::vector<uint8_t> got(rb * (T + 3));
      std::vector<float> gs(T + 3), gz(T + 3);
      ASSERT_TRUE(rows->download(got.data(), got.size()).is_ok());
      ASSERT_TRUE(sc->download(gs.data(), gs.size() * 4).is_ok());
      ASSERT_TRUE(zr->download(gz.data(), gz.size() * 4).is_ok());
      const bool packed = row_storage_bits(st) != 0;
      std::vector<uint8_t> want(rb);
      std::vector<float> dec_want((size_t)T * rank);
      for (int t = 0; t < T; ++t) {
        cache::QuantParams p;
        cache::encode_row(st, z.data() + (size_t)t * ld, rank, want.data(), &p);
        ASSERT_EQ(0, std::memcmp(want.data(), got.data() + (size_t)(t + 3) * rb, rb))
            << row_storage_name(st) << " rank " << rank << " row " << t;
        if (packed) {
          ASSERT_EQ(p.scale, gs[t + 3]) << row_storage_name(st) << " row " << t;
          ASSERT_EQ(p.zero, gz[t + 3]) << row_storage_name(st) << " row " << t;
        }
        cache::decode_row(st, want.data(), rank, p, dec_want.data() + (size_t)t * rank);
      }
      s = detail::decode_latent_rows(rows->as<uint8_t>() + 3 * rb, rb, sc->as<float>() + 3,
                                     zr->as<float>() + 3, st, rank, T, out->as<float>(), rank, 0,
                                     nullptr);
      ASSERT_TRUE(s.is_ok()) << s.to_string();
      std::vector<float> dec((size_t)T * rank);
      ASSERT_TRUE(out->download(dec.data(), dec.size() * 4).is_ok());
      for (size_t i = 0; i < dec.size();
           ++i)  // the CPU may contract q·scale + zero into an FMA: 1 ulp
        ASSERT_NEAR(dec[i], dec_want[i], 1e-6f * (1.f + std::fabs(dec_want[i])))
            << row_storage_name(st) << " " << i;
    }
  }
}

}  // namespace
}  // namespace palu::backends::cuda
