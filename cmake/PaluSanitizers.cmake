# PALU_TSAN and PALU_FUZZ (options declared in the root CMakeLists.txt next to PALU_ASAN).
#
# PALU_TSAN: ThreadSanitizer on every target. TSan and ASan cannot share a process, so the two
# options are exclusive.
# PALU_FUZZ: the libFuzzer targets of tests/fuzz. Libraries are compiled with
# -fsanitize=fuzzer-no-link (coverage for the fuzzer) plus ASan and UBSan; the fuzz executables
# add -fsanitize=fuzzer (libFuzzer's main). Needs clang and libFuzzer (Debian: clang,
# libclang-rt-14-dev, and libomp-14-dev for OpenMP under clang).
if(PALU_TSAN AND PALU_ASAN)
  message(FATAL_ERROR "PALU_TSAN and PALU_ASAN cannot be combined (ThreadSanitizer and AddressSanitizer "
                      "exclude each other): configure one build directory for each")
endif()
if(PALU_TSAN AND PALU_FUZZ)
  message(FATAL_ERROR "PALU_TSAN and PALU_FUZZ cannot be combined (the fuzz targets use AddressSanitizer)")
endif()

if(PALU_TSAN)
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer)
  add_link_options(-fsanitize=thread)
  # GCC warns at every Boost.Asio strand post that TSan does not model atomic_thread_fence; the
  # strands also lock a mutex, which TSan does see. Keep the build log readable.
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    add_compile_options(-Wno-tsan)
  endif()
endif()

if(PALU_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "PALU_FUZZ=ON needs clang (libFuzzer): configure with -DCMAKE_C_COMPILER=clang "
                        "-DCMAKE_CXX_COMPILER=clang++ (Debian packages clang, libclang-rt-14-dev)")
  endif()
  include(CheckCXXSourceCompiles)
  set(CMAKE_REQUIRED_FLAGS "-fsanitize=fuzzer")
  check_cxx_source_compiles(
    "#include <cstddef>
     #include <cstdint>
     extern \"C\" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }"
    PALU_HAVE_LIBFUZZER)
  unset(CMAKE_REQUIRED_FLAGS)
  if(NOT PALU_HAVE_LIBFUZZER)
    message(FATAL_ERROR "PALU_FUZZ=ON but clang cannot link -fsanitize=fuzzer: install the Debian package "
                        "libclang-rt-14-dev (libFuzzer)")
  endif()
  if(PALU_ASAN)
    message(STATUS "PALU_FUZZ already builds with ASan + UBSan; PALU_ASAN adds nothing")
  endif()
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer
                      -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
endif()
