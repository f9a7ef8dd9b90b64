// ASSERT_OK(expr): the test stops with the expression and the Status's message when expr is not
// ok (a Status or anything that converts to one).
#pragma once

#include <gtest/gtest.h>

#include "backends/base/status.h"

#define ASSERT_OK(expr)                                           \
  do {                                                            \
    const ::palu::Status st_ = (expr);                            \
    ASSERT_TRUE(st_.is_ok()) << #expr << ": " << st_.to_string(); \
  } while (0)
