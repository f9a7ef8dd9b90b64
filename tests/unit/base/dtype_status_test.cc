#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "backends/base/dtype.h"
#include "backends/base/status.h"

namespace palu {
namespace {

TEST(DTypeTest, HalfRoundTripsEveryFiniteValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = f16_to_f32((uint16_t)h);
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_f16(f), (uint16_t)h) << std::hex << h;
  }
}

TEST(DTypeTest, HalfRoundsToNearestEven) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(65504.f), 0x7bff);
  EXPECT_EQ(f32_to_f16(1e6f), 0x7c00);                 // overflow → inf
  EXPECT_EQ(f32_to_f16(5.9604645e-8f), 0x0001);        // smallest subnormal
  EXPECT_EQ(f32_to_f16(2.9802322e-8f), 0x0000);        // half of it: ties to even → 0
  EXPECT_EQ(f32_to_f16(1.0f + 1.0f / 2048), 0x3c00);   // tie → even
  EXPECT_EQ(f32_to_f16(1.0f + 3.0f / 2048), 0x3c02);   // tie → even (up)
}

TEST(DTypeTest, Bfloat16) {
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.5f)), 1.5f);
  EXPECT_EQ(f32_to_bf16(1.0f + 1.0f / 256), 0x3f80);  // tie → even
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

Result<int> parse_positive(int v) {
  if (v <= 0) return invalid_argument("v must be positive, got " + std::to_string(v));
  return v;
}

Status use(int v, int* out) {
  PALU_ASSIGN_OR_RETURN(*out, parse_positive(v));
  return Status::ok();
}

TEST(StatusTest, ResultAndMacros) {
  int x = 0;
  EXPECT_TRUE(use(3, &x).is_ok());
  EXPECT_EQ(x, 3);
  Status st = use(-1, &x);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(st.to_string(), "INVALID_ARGUMENT: v must be positive, got -1");
  EXPECT_EQ(st.with_context("flag --n").message(), "flag --n: v must be positive, got -1");
  EXPECT_STREQ(status_code_name(StatusCode::kDataLoss), "DATA_LOSS");
}

}  // namespace
}  // namespace palu
