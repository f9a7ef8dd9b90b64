// Packing of B-bit codes and the packed row codec: byte layout, round trips, and bit-exact
// agreement with fake_quantize (the accuracy simulation).
#include "cache/latent_packing.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backends/base/dtype.h"
#include "cache/latent_codec.h"

namespace palu::cache {
namespace {

constexpr int kBits[] = {2, 3, 4, 8};
const std::vector<size_t> kLengths = {0,  1,  2,  3,  5,  7,  8,  9,   15,  16,
                                      17, 31, 33, 63, 64, 65, 96, 127, 160, 255};

// Reference packer written from the documented layout: bit k of the row's bit string is bit
// k mod 8 of byte k / 8; code i occupies bits [i·B, i·B + B).
std::vector<uint8_t> reference_pack(const std::vector<uint8_t>& codes, int bits) {
  std::vector<uint8_t> out(packed_row_bytes(bits, codes.size()), 0);
  for (size_t i = 0; i < codes.size(); ++i) {
    for (int b = 0; b < bits; ++b) {
      if ((codes[i] >> b) & 1) {
        const size_t k = i * bits + b;
        out[k / 8] |= (uint8_t)(1u << (k % 8));
      }
    }
  }
  return out;
}

bool bitwise_equal(const float* a, const float* b, size_t n) {
  return std::memcmp(a, b, n * sizeof(float)) == 0;
}

TEST(LatentPackingTest, RowBytes) {
  EXPECT_EQ(packed_row_bytes(2, 33), 9u);
  EXPECT_EQ(packed_row_bytes(3, 33), 13u);  // 99 bits
  EXPECT_EQ(packed_row_bytes(3, 8), 3u);
  EXPECT_EQ(packed_row_bytes(3, 96), 36u);
  EXPECT_EQ(packed_row_bytes(4, 33), 17u);
  EXPECT_EQ(packed_row_bytes(8, 33), 33u);
  EXPECT_EQ(storage_row_bytes(CacheStorage::kF32, 33), 132u);
  EXPECT_EQ(storage_row_bytes(CacheStorage::kF16, 33), 66u);
  EXPECT_EQ(storage_row_bytes(CacheStorage::kBF16, 33), 66u);
  EXPECT_EQ(storage_row_bytes(CacheStorage::kQ3, 160), 60u);
  EXPECT_EQ(storage_param_bytes(CacheStorage::kQ2), 8u);
  EXPECT_EQ(storage_param_bytes(CacheStorage::kF16), 0u);
}

TEST(LatentPackingTest, HandPackedBytes) {
  uint8_t out[4] = {0xee, 0xee, 0xee, 0xee};
  // 2-bit: four codes per byte, first code in the lowest bits.
  const uint8_t c2[] = {1, 2, 3, 0, 3};
  pack_codes(c2, 5, 2, out);
  EXPECT_EQ(out[0], 0x39);  // 01 | 10<<2 | 11<<4 | 00<<6
  EXPECT_EQ(out[1], 0x03);  // last code, unused bits zero
  EXPECT_EQ(out[2], 0xee);  // nothing written past the row
  // 4-bit: low nibble first.
  const uint8_t c4[] = {0xA, 0x5, 0xF};
  pack_codes(c4, 3, 4, out);
  EXPECT_EQ(out[0], 0x5A);
  EXPECT_EQ(out[1], 0x0F);
  // 3-bit: eight codes 0..7 form the 24-bit little-endian integer Σ j << 3j = 0xFAC688.
  const uint8_t c3[] = {0, 1, 2, 3, 4, 5, 6, 7};
  pack_codes(c3, 8, 3, out);
  EXPECT_EQ(out[0], 0x88);
  EXPECT_EQ(out[1], 0xC6);
  EXPECT_EQ(out[2], 0xFA);
}

TEST(LatentPackingTest, PackMatchesReferenceAndRoundTrips) {
  std::mt19937 rng(1234);
  for (int bits : kBits) {
    for (size_t n : kLengths) {
      std::vector<uint8_t> codes(n);
      for (auto& c : codes) c = (uint8_t)(rng() & ((1u << bits) - 1));
      const std::vector<uint8_t> expected = reference_pack(codes, bits);
      std::vector<uint8_t> packed(expected.size() + 1, 0xa5);  // guard byte
      pack_codes(codes.data(), n, bits, packed.data());
      EXPECT_EQ(packed.back(), 0xa5) << "wrote past the row: bits " << bits << " n " << n;
      packed.pop_back();
      EXPECT_EQ(packed, expected) << "bits " << bits << " n " << n;
      std::vector<uint8_t> back(n, 0xff);
      unpack_codes(packed.data(), n, bits, back.data());
      EXPECT_EQ(back, codes) << "bits " << bits << " n " << n;
    }
  }
}

// decode(encode(z)) must equal fake_quantize(z) bit for bit, for every width and odd lengths.
TEST(LatentPackingTest, DecodeEqualsFakeQuantizeBitwise) {
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (int bits : kBits) {
    for (size_t n : kLengths) {
      if (n == 0) continue;
      for (int trial = 0; trial < 20; ++trial) {
        std::vector<float> z(n);
        const float mag = std::ldexp(1.0f, (int)(rng() % 20) - 10);
        for (auto& v : z) v = normal(rng) * mag + (trial % 3 == 0 ? 5.0f * mag : 0.f);
        if (trial == 1) {  // exact ties: values on a grid with half steps
          for (size_t i = 0; i < n; ++i) z[i] = (float)(i % 7) * 0.5f;
        }
        std::vector<float> expected = z;
        fake_quantize(expected.data(), n, bits);
        std::vector<uint8_t> packed(packed_row_bytes(bits, n));
        const QuantParams p = encode_packed_row(z.data(), n, bits, packed.data());
        const QuantParams want = quant_params(z.data(), n, bits);
        EXPECT_EQ(std::memcmp(&p, &want, sizeof p), 0);
        std::vector<float> got(n, -1.f);
        decode_packed_row(packed.data(), n, bits, p, got.data());
        ASSERT_TRUE(bitwise_equal(got.data(), expected.data(), n))
            << "bits " << bits << " n " << n << " trial " << trial;
        // The generic entry points agree.
        CacheStorage s;
        ASSERT_TRUE(storage_for_bits(bits, &s));
        std::vector<uint8_t> row(storage_row_bytes(s, n));
        QuantParams p2;
        encode_row(s, z.data(), n, row.data(), &p2);
        EXPECT_EQ(row, packed);
        std::vector<float> got2(n);
        decode_row(s, row.data(), n, p2, got2.data());
        EXPECT_TRUE(bitwise_equal(got2.data(), expected.data(), n));
      }
    }
  }
}

// Values where x·(1/scale) and x/scale round to different codes: the codec must follow
// fake_quantize's convention (multiply by the inverse) there too. Random inputs almost never
// hit these, so they are searched for.
TEST(LatentPackingTest, FollowsFakeQuantizeOnRoundingBoundaries) {
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> uni(0.5f, 100.f);
  for (int bits : kBits) {
    const float levels = (float)((1 << bits) - 1);
    std::vector<float> z = {0.f};  // lo = 0
    float hi = 0.f;
    for (int tries = 0; tries < 200000 && z.size() < 3; ++tries) {
      hi = uni(rng);
      const float scale = hi / levels, inv = 1.0f / scale;
      for (int k = 0; k < (int)levels && z.size() < 3; ++k) {
        // Walk ±3 ulps around the midpoint between codes k and k+1.
        float y = ((float)k + 0.5f) * scale;
        for (int s = 0; s < 3; ++s) y = std::nextafter(y, 0.f);
        for (int step = 0; step < 7; ++step, y = std::nextafter(y, hi)) {
          if (std::nearbyint(y * inv) != std::nearbyint(y / scale)) {
            z = {0.f, y, hi};
            break;
          }
        }
      }
    }
    ASSERT_EQ(z.size(), 3u) << "no rounding boundary found for bits " << bits;
    std::vector<float> expected = z;
    fake_quantize(expected.data(), z.size(), bits);
    std::vector<uint8_t> packed(packed_row_bytes(bits, z.size()));
    const QuantParams p = encode_packed_row(z.data(), z.size(), bits, packed.data());
    std::vector<float> got(z.size());
    decode_packed_row(packed.data(), z.size(), bits, p, got.data());
    EXPECT_TRUE(bitwise_equal(got.data(), expected.data(), z.size()))
        << "bits " << bits << " y " << z[1];
  }
}

TEST(LatentPackingTest, ConstantRowsDecodeExactlyIncludingNegativeZero) {
  for (int bits : kBits) {
    for (float c : {0.0f, -0.0f, 3.25f, -1e-30f}) {
      std::vector<float> z(33, c), expected = z;
      fake_quantize(expected.data(), z.size(), bits);
      std::vector<uint8_t> packed(packed_row_bytes(bits, z.size()), 0xff);
      const QuantParams p = encode_packed_row(z.data(), z.size(), bits, packed.data());
      EXPECT_EQ(p.scale, 0.f);
      for (uint8_t b : packed) EXPECT_EQ(b, 0);
      std::vector<float> got(z.size());
      decode_packed_row(packed.data(), z.size(), bits, p, got.data());
      EXPECT_TRUE(bitwise_equal(got.data(), expected.data(), z.size()))
          << "bits " << bits << " c " << c;
      EXPECT_TRUE(bitwise_equal(got.data(), z.data(), z.size()));
    }
  }
}

TEST(LatentPackingTest, FloatStorages) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 3.f);
  const size_t n = 37;
  std::vector<float> z(n);
  for (auto& v : z) v = normal(rng);
  for (CacheStorage s : {CacheStorage::kF32, CacheStorage::kF16, CacheStorage::kBF16}) {
    std::vector<uint8_t> row(storage_row_bytes(s, n));
    encode_row(s, z.data(), n, row.data(), nullptr);
    std::vector<float> got(n);
    decode_row(s, row.data(), n, QuantParams{}, got.data());
    for (size_t i = 0; i < n; ++i) {
      float want = z[i];
      if (s == CacheStorage::kF16) want = f16_to_f32(f32_to_f16(z[i]));
      if (s == CacheStorage::kBF16) want = bf16_to_f32(f32_to_bf16(z[i]));
      EXPECT_EQ(got[i], want) << storage_name(s) << " i " << i;
    }
  }
}

TEST(LatentPackingTest, StorageNamesAndBits) {
  EXPECT_STREQ(storage_name(CacheStorage::kQ3), "q3");
  EXPECT_EQ(storage_bits(CacheStorage::kQ3), 3);
  EXPECT_EQ(storage_bits(CacheStorage::kF16), 0);
  CacheStorage s;
  EXPECT_FALSE(storage_for_bits(5, &s));
  EXPECT_TRUE(storage_for_bits(2, &s));
  EXPECT_EQ(s, CacheStorage::kQ2);
}

}  // namespace
}  // namespace palu::cache
