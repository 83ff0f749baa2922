# Every dependency comes from a Debian package that scripts/install-deps.sh installs. A missing
# one stops configuration with the package to install.

function(attnlab_require found what package)
  if(NOT ${found})
    message(FATAL_ERROR "attnlab needs ${what}: install the Debian package '${package}' "
                        "(scripts/install-deps.sh installs everything attnlab needs)")
  endif()
endfunction()

find_package(Eigen3 3.4 QUIET NO_MODULE)
attnlab_require(Eigen3_FOUND "Eigen 3.4" libeigen3-dev)

find_package(OpenMP QUIET COMPONENTS CXX)
attnlab_require(OpenMP_CXX_FOUND "OpenMP" "g++ (build-essential)")

find_package(nlohmann_json 3.10 QUIET)
attnlab_require(nlohmann_json_FOUND "nlohmann-json" nlohmann-json3-dev)

find_package(Boost 1.74 QUIET COMPONENTS program_options)
attnlab_require(Boost_FOUND "Boost.Program_options" libboost-program-options-dev)

find_package(ZLIB QUIET)
attnlab_require(ZLIB_FOUND "zlib" zlib1g-dev)

if(ATTNLAB_BUILD_TESTS)
  find_package(GTest QUIET)
  attnlab_require(GTest_FOUND "GoogleTest" libgtest-dev)
endif()

# OpenBLAS (OpenMP build, so it shares our OpenMP threads instead of competing with them) for
# large f32/f64 products: bench/matmul_bench measured it 1.5-1.9x faster than Eigen's GEMM at
# 512^3-2048^3 on our 2-core machines. AUTO uses it when installed; OFF keeps Eigen alone.
set(ATTNLAB_BLAS AUTO CACHE STRING "Route large matmuls to OpenBLAS (AUTO, ON, OFF)")
set_property(CACHE ATTNLAB_BLAS PROPERTY STRINGS AUTO ON OFF)
set(ATTNLAB_WITH_BLAS 0)
if(NOT ATTNLAB_BLAS STREQUAL "OFF")
  set(_ob_arch "${CMAKE_LIBRARY_ARCHITECTURE}")
  find_path(ATTNLAB_CBLAS_INCLUDE_DIR cblas.h
    PATHS /usr/include/${_ob_arch}/openblas-openmp NO_DEFAULT_PATH)
  find_library(ATTNLAB_OPENBLAS_LIBRARY openblas
    PATHS /usr/lib/${_ob_arch}/openblas-openmp NO_DEFAULT_PATH)
  if(ATTNLAB_CBLAS_INCLUDE_DIR AND ATTNLAB_OPENBLAS_LIBRARY)
    set(ATTNLAB_WITH_BLAS 1)
    message(STATUS "attnlab: large matmuls go to OpenBLAS (${ATTNLAB_OPENBLAS_LIBRARY})")
  elseif(ATTNLAB_BLAS STREQUAL "ON")
    attnlab_require(FALSE "OpenBLAS with OpenMP (ATTNLAB_BLAS=ON)" libopenblas-openmp-dev)
  else()
    message(STATUS "attnlab: OpenBLAS (libopenblas-openmp-dev) not found; matmuls use Eigen")
  endif()
endif()
