# The optional XNNPACK kernel provider: libedgekit_xnnpack.so, a module libedgekit dlopens at run
# time from its own folder (it links XNNPACK + pthreadpool, not libedgekit). Included at the end of
# sdk/runtime/CMakeLists.txt.
#
#   EDGEKIT_XNNPACK       AUTO (default): build it when xnnpack.h and libXNNPACK are found;
#                         ON: the same, and an error when they are not; OFF: never.
#   EDGEKIT_XNNPACK_ROOT  a prefix holding include/xnnpack.h, include/pthreadpool.h and
#                         lib[/<triplet>]/libXNNPACK.so + libpthreadpool.so, e.g. a board rootfs's /usr
#                         for a cross build (Debian 12: libxnnpack-dev + libpthreadpool-dev). Without
#                         it a native build searches the system, and a cross build looks nowhere.
#
# A board rootfs's /usr/include is never put on the include path (its libc headers would shadow the
# toolchain's, e.g. at a glibc 2.17 floor): the two headers are copied into the build tree, the
# libraries are linked by full path, and -rpath-link lets GNU ld resolve their own needs
# (libcpuinfo) from the same folder.
#
# The provider builds against two generations of XNNPACK's operator API (kernels/xnnpack/generation.h),
# picked here from the target's headers: EDGEKIT_XNNPACK_RESHAPE when xnnpack.h declares
# xnn_reshape_convolution2d_nhwc_f32 (the create/reshape/setup API, Debian 13's 2024-11 XNNPACK; else
# Debian 12's 2022 setup API), and EDGEKIT_PTHREADPOOL_WITH_THREAD when pthreadpool.h declares the
# 2024 pthreadpool's *_with_thread functions, which threadpool.c then implements as well.
set(EDGEKIT_XNNPACK "AUTO" CACHE STRING "Build the XNNPACK kernel provider: AUTO, ON or OFF")
set_property(CACHE EDGEKIT_XNNPACK PROPERTY STRINGS AUTO ON OFF)
set(EDGEKIT_XNNPACK_ROOT "" CACHE PATH "Prefix of XNNPACK's include/ and lib/ (a board rootfs's /usr)")

string(TOUPPER "${EDGEKIT_XNNPACK}" _ekx_mode)
if(NOT _ekx_mode MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "EDGEKIT_XNNPACK=${EDGEKIT_XNNPACK}: use AUTO, ON or OFF")
endif()

# Sets _ekx_header_dir, _ekx_xnnpack_lib, _ekx_pthreadpool_lib, or _ekx_why (what is missing).
function(_ekx_find)
  set(_ekx_why "" PARENT_SCOPE)
  if(EDGEKIT_XNNPACK_ROOT)
    set(root "${EDGEKIT_XNNPACK_ROOT}")
    if(NOT EXISTS "${root}/include/xnnpack.h" OR NOT EXISTS "${root}/include/pthreadpool.h")
      set(_ekx_why "${root}/include has no xnnpack.h or pthreadpool.h (libxnnpack-dev, libpthreadpool-dev)"
          PARENT_SCOPE)
      return()
    endif()
    set(libdirs)
    foreach(triplet IN ITEMS "${CMAKE_LIBRARY_ARCHITECTURE}" "${CMAKE_SYSTEM_PROCESSOR}-linux-gnu")
      if(triplet AND NOT triplet STREQUAL "-linux-gnu")
        list(APPEND libdirs "${root}/lib/${triplet}")
      endif()
    endforeach()
    list(APPEND libdirs "${root}/lib64" "${root}/lib")
    list(REMOVE_DUPLICATES libdirs)
    set(xnnpack "")
    foreach(dir IN LISTS libdirs)
      if(EXISTS "${dir}/libXNNPACK.so" AND EXISTS "${dir}/libpthreadpool.so")
        set(xnnpack "${dir}/libXNNPACK.so")
        set(pthreadpool "${dir}/libpthreadpool.so")
        break()
      endif()
    endforeach()
    if(NOT xnnpack)
      string(REPLACE ";" ", " dirs "${libdirs}")
      set(_ekx_why "no libXNNPACK.so + libpthreadpool.so in ${dirs}" PARENT_SCOPE)
      return()
    endif()
    set(header_dir "${root}/include")
  elseif(CMAKE_CROSSCOMPILING)
    set(_ekx_why "cross build without EDGEKIT_XNNPACK_ROOT (the board's XNNPACK prefix, e.g. <rootfs>/usr)"
        PARENT_SCOPE)
    return()
  else()
    find_path(EDGEKIT_XNNPACK_INCLUDE_DIR xnnpack.h)
    find_path(EDGEKIT_PTHREADPOOL_INCLUDE_DIR pthreadpool.h)
    find_library(EDGEKIT_XNNPACK_LIBRARY XNNPACK)
    find_library(EDGEKIT_PTHREADPOOL_LIBRARY pthreadpool)
    mark_as_advanced(EDGEKIT_XNNPACK_INCLUDE_DIR EDGEKIT_PTHREADPOOL_INCLUDE_DIR EDGEKIT_XNNPACK_LIBRARY
                     EDGEKIT_PTHREADPOOL_LIBRARY)
    if(NOT EDGEKIT_XNNPACK_INCLUDE_DIR OR NOT EDGEKIT_PTHREADPOOL_INCLUDE_DIR)
      set(_ekx_why "xnnpack.h or pthreadpool.h not found (apt-get install libxnnpack-dev libpthreadpool-dev)"
          PARENT_SCOPE)
      return()
    endif()
    if(NOT EDGEKIT_XNNPACK_LIBRARY OR NOT EDGEKIT_PTHREADPOOL_LIBRARY)
      set(_ekx_why "libXNNPACK or libpthreadpool not found (apt-get install libxnnpack-dev libpthreadpool-dev)"
          PARENT_SCOPE)
      return()
    endif()
    set(xnnpack "${EDGEKIT_XNNPACK_LIBRARY}")
    set(pthreadpool "${EDGEKIT_PTHREADPOOL_LIBRARY}")
    set(header_dir "${EDGEKIT_XNNPACK_INCLUDE_DIR}")
    set(pthreadpool_header_dir "${EDGEKIT_PTHREADPOOL_INCLUDE_DIR}")
  endif()
  if(NOT pthreadpool_header_dir)
    set(pthreadpool_header_dir "${header_dir}")
  endif()
  # Only these two headers, in a folder of the build tree.
  set(copy "${CMAKE_CURRENT_BINARY_DIR}/xnnpack-include")
  configure_file("${header_dir}/xnnpack.h" "${copy}/xnnpack.h" COPYONLY)
  configure_file("${pthreadpool_header_dir}/pthreadpool.h" "${copy}/pthreadpool.h" COPYONLY)
  set(_ekx_header_dir "${copy}" PARENT_SCOPE)
  set(_ekx_xnnpack_lib "${xnnpack}" PARENT_SCOPE)
  set(_ekx_pthreadpool_lib "${pthreadpool}" PARENT_SCOPE)
endfunction()

set(EDGEKIT_HAVE_XNNPACK_PROVIDER OFF)
if(_ekx_mode STREQUAL "OFF")
  message(STATUS "EdgeKit XNNPACK provider: not built (EDGEKIT_XNNPACK=OFF)")
else()
  _ekx_find()
  if(NOT _ekx_why)
    # The libraries must link for this target (a prefix of another architecture would not). GNU ld
    # needs -rpath-link to follow their own needs; zig cc (lld) does not and refuses the option.
    # What the board's libraries need themselves is not checked (--allow-shlib-undefined, as a shared
    # library's link already does): the toolchain's libc may be older than the board's (Debian 12's
    # cross gcc links against glibc 2.36; Debian 13's libXNNPACK needs fmodf@GLIBC_2.38 from its own
    # libm), and the board resolves them at load time. What EdgeKit's own ELFs need is checked against
    # the board's glibc after the build.
    get_filename_component(_ekx_libdir "${_ekx_xnnpack_lib}" DIRECTORY)
    string(MD5 _ekx_key "${_ekx_xnnpack_lib};${_ekx_pthreadpool_lib};${CMAKE_C_COMPILER};2")
    include(CheckCSourceCompiles)
    set(CMAKE_REQUIRED_INCLUDES "${_ekx_header_dir}")
    set(CMAKE_REQUIRED_LIBRARIES "${_ekx_xnnpack_lib};${_ekx_pthreadpool_lib};Threads::Threads;m")
    set(CMAKE_REQUIRED_QUIET ON)
    set(_ekx_test_program "
      #include <xnnpack.h>
      int main(void) {
        pthreadpool_t pool = pthreadpool_create(2);
        pthreadpool_destroy(pool);
        return xnn_initialize(NULL) == xnn_status_success ? 0 : 1;
      }")
    set(CMAKE_REQUIRED_LINK_OPTIONS "-Wl,--allow-shlib-undefined;-Wl,-rpath-link,${_ekx_libdir}")
    check_c_source_compiles("${_ekx_test_program}" EDGEKIT_XNNPACK_LINKS_${_ekx_key})
    set(_ekx_link_options "-Wl,-rpath-link,${_ekx_libdir}")
    if(NOT EDGEKIT_XNNPACK_LINKS_${_ekx_key})
      set(CMAKE_REQUIRED_LINK_OPTIONS "-Wl,--allow-shlib-undefined")
      check_c_source_compiles("${_ekx_test_program}" EDGEKIT_XNNPACK_LINKS_PLAIN_${_ekx_key})
      set(_ekx_link_options "")
      if(NOT EDGEKIT_XNNPACK_LINKS_PLAIN_${_ekx_key})
        set(_ekx_why "a test program does not link with ${_ekx_xnnpack_lib} (another architecture?)")
      endif()
    endif()
    if(NOT _ekx_why)
      # Which API generation the headers declare (compiled and linked against the same libraries).
      include(CheckSymbolExists)
      set(CMAKE_REQUIRED_LINK_OPTIONS "-Wl,--allow-shlib-undefined;${_ekx_link_options}")
      check_symbol_exists(xnn_reshape_convolution2d_nhwc_f32 "xnnpack.h" EDGEKIT_XNNPACK_RESHAPE_${_ekx_key})
      check_symbol_exists(pthreadpool_parallelize_3d_tile_1d_with_uarch_with_thread "pthreadpool.h"
                          EDGEKIT_PTHREADPOOL_WITH_THREAD_${_ekx_key})
      if(EDGEKIT_XNNPACK_RESHAPE_${_ekx_key})
        set(_ekx_generation "the 2024 create/reshape/setup API")
      else()
        set(_ekx_generation "the 2022 create/setup API")
      endif()
    endif()
    unset(CMAKE_REQUIRED_INCLUDES)
    unset(CMAKE_REQUIRED_LIBRARIES)
    unset(CMAKE_REQUIRED_LINK_OPTIONS)
    unset(CMAKE_REQUIRED_QUIET)
  endif()
  if(_ekx_why)
    if(_ekx_mode STREQUAL "ON")
      message(FATAL_ERROR "EDGEKIT_XNNPACK=ON but the XNNPACK provider cannot be built: ${_ekx_why}")
    endif()
    message(STATUS "EdgeKit XNNPACK provider: not built (${_ekx_why})")
  else()
    set(EDGEKIT_HAVE_XNNPACK_PROVIDER ON)
    message(STATUS "EdgeKit XNNPACK provider: built (libedgekit_xnnpack.so with ${_ekx_xnnpack_lib}, "
                   "${_ekx_generation})")
    # MODULE: dlopen'ed only. It lands next to libedgekit in the build tree (same folder) and in
    # the install tree (EDGEKIT_INSTALL_LIBDIR), where the runtime looks for it.
    # threadpool.c defines the pthreadpool API XNNPACK calls (on the launch's team), exported so
    # that libXNNPACK binds to it; provider.c probes that it does.
    add_library(edgekit_xnnpack MODULE kernels/xnnpack/provider.c kernels/xnnpack/quantized.c
                kernels/xnnpack/threadpool.c)
    target_include_directories(edgekit_xnnpack SYSTEM PRIVATE "${_ekx_header_dir}")
    target_include_directories(edgekit_xnnpack PRIVATE "${CMAKE_CURRENT_SOURCE_DIR}/include"
                               "${CMAKE_CURRENT_SOURCE_DIR}/kernels")
    target_compile_definitions(edgekit_xnnpack PRIVATE _GNU_SOURCE
      $<$<BOOL:${EDGEKIT_XNNPACK_RESHAPE_${_ekx_key}}>:EDGEKIT_XNNPACK_RESHAPE=1>
      $<$<BOOL:${EDGEKIT_PTHREADPOOL_WITH_THREAD_${_ekx_key}}>:EDGEKIT_PTHREADPOOL_WITH_THREAD=1>)
    set_target_properties(edgekit_xnnpack PROPERTIES
      C_STANDARD 11 C_STANDARD_REQUIRED ON C_EXTENSIONS OFF
      C_VISIBILITY_PRESET hidden POSITION_INDEPENDENT_CODE ON
      INSTALL_RPATH "$ORIGIN")
    target_compile_options(edgekit_xnnpack PRIVATE -Wall -Wextra $<$<BOOL:${EDGEKIT_WERROR}>:-Werror>)
    target_link_libraries(edgekit_xnnpack PRIVATE "${_ekx_xnnpack_lib}" "${_ekx_pthreadpool_lib}"
                          Threads::Threads m)
    # -z defs: every symbol resolves without libedgekit; -z nodelete: a dlclose never unmaps the
    # code the idle pthreadpool workers wait in.
    target_link_options(edgekit_xnnpack PRIVATE ${_ekx_link_options} "-Wl,-z,defs" "-Wl,-z,nodelete")
    install(TARGETS edgekit_xnnpack LIBRARY DESTINATION ${EDGEKIT_INSTALL_LIBDIR})
  endif()
endif()
