# find_package(palu) → palu::palu (the shared libpalu) and palu::palu_static.
# Installed by `cmake --install` next to lib/cmake/palu; paths are relative to this file.
get_filename_component(_palu_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
find_library(_palu_shared NAMES palu PATHS "${_palu_prefix}/lib" "${_palu_prefix}/lib64"
             "${_palu_prefix}/lib/x86_64-linux-gnu" NO_DEFAULT_PATH)
find_file(_palu_static NAMES libpalu.a PATHS "${_palu_prefix}/lib" "${_palu_prefix}/lib64"
          "${_palu_prefix}/lib/x86_64-linux-gnu" NO_DEFAULT_PATH)
if(NOT _palu_shared OR NOT _palu_static OR NOT EXISTS "${_palu_prefix}/include/palu/palu.h")
  set(palu_FOUND FALSE)
  set(palu_NOT_FOUND_MESSAGE "libpalu or palu/palu.h is missing under ${_palu_prefix}")
  return()
endif()
if(NOT TARGET palu::palu)
  add_library(palu::palu SHARED IMPORTED)
  set_target_properties(palu::palu PROPERTIES IMPORTED_LOCATION "${_palu_shared}"
                        INTERFACE_INCLUDE_DIRECTORIES "${_palu_prefix}/include")
  add_library(palu::palu_static STATIC IMPORTED)
  set_target_properties(palu::palu_static PROPERTIES IMPORTED_LOCATION "${_palu_static}"
                        INTERFACE_INCLUDE_DIRECTORIES "${_palu_prefix}/include"
                        INTERFACE_LINK_LIBRARIES "protobuf;stdc++;m;pthread")
endif()
set(palu_FOUND TRUE)
