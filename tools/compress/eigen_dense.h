// The one include of Eigen's dense module for palu::compress headers.
//
// palu_compress links Eigen3::Eigen PRIVATE (tools/compress/CMakeLists.txt), so a consumer of
// these headers (the unit tests, palu-compress) may not have /usr/include/eigen3 on its include
// path. Eigen's own headers include each other with relative quotes, so reaching the module
// through <eigen3/Eigen/Dense> from /usr/include works everywhere the Debian package is
// installed. Prefer the normal spelling when it resolves.
#pragma once

#if __has_include(<Eigen/Dense>)
#include <Eigen/Dense>  // IWYU pragma: export
#else
#include <eigen3/Eigen/Dense>  // IWYU pragma: export
#endif
