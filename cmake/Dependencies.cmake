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
