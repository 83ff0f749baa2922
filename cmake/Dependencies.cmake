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

# CUDA (DESIGN.md section 4). Every kernel file is built twice: as C++ against lib/simt (the
# emulator, which needs the toolkit's headers for dim3, __half, __nv_bfloat16 and the runtime's
# types) into attnlab_cuda_emu, and by nvcc into attnlab_cuda_real (cuBLAS, sm_80 and sm_90)
# whether or not a GPU is present. AUTO builds what the machine allows; ON requires both; OFF
# builds neither, and CUDA tensors are then refused with a clear error.
set(ATTNLAB_CUDA AUTO CACHE STRING "Build the CUDA backends (AUTO, ON, OFF)")
set_property(CACHE ATTNLAB_CUDA PROPERTY STRINGS AUTO ON OFF)
set(ATTNLAB_WITH_CUDA 0)       # the emulated backend (and CUDA dispatch in the ops) is built
set(ATTNLAB_WITH_CUDA_REAL 0)  # the nvcc-built backend is built too
if(NOT ATTNLAB_CUDA STREQUAL "OFF")
  find_package(CUDAToolkit QUIET)
  find_package(Boost 1.74 QUIET COMPONENTS context)
  if(CUDAToolkit_FOUND AND Boost_CONTEXT_FOUND)
    set(ATTNLAB_WITH_CUDA 1)
    if(CUDAToolkit_NVCC_EXECUTABLE AND EXISTS "${CUDAToolkit_NVCC_EXECUTABLE}")
      set(ATTNLAB_WITH_CUDA_REAL 1)
    endif()
  endif()
  if(ATTNLAB_CUDA STREQUAL "ON")
    attnlab_require(CUDAToolkit_FOUND "the CUDA toolkit (ATTNLAB_CUDA=ON)" "the NVIDIA CUDA toolkit at /usr/local/cuda")
    attnlab_require(Boost_CONTEXT_FOUND "Boost.Context (ATTNLAB_CUDA=ON)" libboost-context-dev)
    attnlab_require(ATTNLAB_WITH_CUDA_REAL "nvcc (ATTNLAB_CUDA=ON)" "the NVIDIA CUDA toolkit at /usr/local/cuda")
  endif()
  if(ATTNLAB_WITH_CUDA_REAL)
    message(STATUS "attnlab: CUDA kernels built by nvcc ${CUDAToolkit_VERSION} and emulated on the CPU")
  elseif(ATTNLAB_WITH_CUDA)
    message(STATUS "attnlab: CUDA kernels emulated on the CPU only (nvcc not found)")
  else()
    message(STATUS "attnlab: no CUDA backend (needs the CUDA toolkit and libboost-context-dev)")
  endif()
endif()

# MPI (DESIGN.md section 8): starts and coordinates the processes of a data-parallel run
# (`mpirun -np N attnlab train ...`) and all-reduces CPU gradients (train/distributed_mpi.cpp).
# AUTO builds the MPI backend when Open MPI's development files are installed; ON requires
# them; OFF (or AUTO without them) still trains in one process, and dist.backend = mpi then
# says what is missing. MPIEXEC_EXECUTABLE (mpirun) runs the multi-rank tests.
set(ATTNLAB_MPI AUTO CACHE STRING "Build the MPI data-parallel backend (AUTO, ON, OFF)")
set_property(CACHE ATTNLAB_MPI PROPERTY STRINGS AUTO ON OFF)
set(ATTNLAB_WITH_MPI 0)
if(NOT ATTNLAB_MPI STREQUAL "OFF")
  find_package(MPI QUIET COMPONENTS CXX)
  if(MPI_CXX_FOUND)
    set(ATTNLAB_WITH_MPI 1)
    message(STATUS "attnlab: MPI backend (MPI ${MPI_CXX_VERSION}, ${MPI_CXX_LIB_NAMES}); "
                   "multi-rank tests run ${MPIEXEC_EXECUTABLE}")
    if(NOT MPIEXEC_EXECUTABLE)
      message(STATUS "attnlab: no mpirun found (openmpi-bin): the multi-rank tests are not registered")
    endif()
  elseif(ATTNLAB_MPI STREQUAL "ON")
    attnlab_require(FALSE "MPI for C++ (ATTNLAB_MPI=ON)" libopenmpi-dev)
  else()
    message(STATUS "attnlab: MPI (libopenmpi-dev) not found; training runs in one process only")
  endif()
else()
  message(STATUS "attnlab: MPI backend configured off (ATTNLAB_MPI=OFF); training runs in one process only")
endif()

# NCCL (DESIGN.md section 8): all-reduces gradients between GPUs (lib/cuda/nccl.cu). It ships
# beside the CUDA toolkit's libraries and only the nvcc-built backend can call it (the emulator
# runs kernels on the CPU). AUTO uses it when the toolkit's directories hold nccl.h and libnccl;
# ON requires it; OFF builds lib/cuda/nccl.cu as a stub whose every call says NCCL was
# configured off. lib/cuda/nccl.cu alone learns the choice (ATTNLAB_WITH_NCCL), so switching
# it recompiles one file.
set(ATTNLAB_NCCL AUTO CACHE STRING "Build the NCCL data-parallel backend for GPUs (AUTO, ON, OFF)")
set_property(CACHE ATTNLAB_NCCL PROPERTY STRINGS AUTO ON OFF)
set(ATTNLAB_WITH_NCCL 0)
if(NOT ATTNLAB_NCCL STREQUAL "OFF")
  if(ATTNLAB_WITH_CUDA_REAL)
    find_path(ATTNLAB_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
    find_library(ATTNLAB_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR})
    if(ATTNLAB_NCCL_INCLUDE_DIR AND ATTNLAB_NCCL_LIBRARY)
      set(ATTNLAB_WITH_NCCL 1)
      message(STATUS "attnlab: NCCL backend with ${ATTNLAB_NCCL_LIBRARY}")
    endif()
  endif()
  if(NOT ATTNLAB_WITH_NCCL)
    if(ATTNLAB_NCCL STREQUAL "ON")
      attnlab_require(ATTNLAB_WITH_CUDA_REAL "nvcc for NCCL (ATTNLAB_NCCL=ON)" "the NVIDIA CUDA toolkit at /usr/local/cuda")
      attnlab_require(FALSE "NCCL beside the CUDA toolkit (ATTNLAB_NCCL=ON)" "libnccl-dev (NVIDIA's CUDA repository)")
    endif()
    message(STATUS "attnlab: no NCCL backend (needs nvcc and NCCL beside the CUDA toolkit); GPU runs use one process")
  endif()
else()
  message(STATUS "attnlab: NCCL backend configured off (ATTNLAB_NCCL=OFF)")
endif()
# Read by the nvcc build of lib/cuda/nccl.cu (attnlab_cuda_real is created in this directory);
# the emulated build of it is a stub whatever this says.
set_source_files_properties("${PROJECT_SOURCE_DIR}/lib/cuda/nccl.cu" PROPERTIES
  COMPILE_DEFINITIONS "ATTNLAB_WITH_NCCL=${ATTNLAB_WITH_NCCL}")
