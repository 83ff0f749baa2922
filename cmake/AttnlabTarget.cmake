# Flags for attnlab's own targets (not for dependencies): strict warnings, optimisation,
# OpenMP, and includes relative to the repository root ("lib/tensor.h").

function(attnlab_target_defaults target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Werror)
  if(ATTNLAB_NATIVE)
    target_compile_options(${target} PRIVATE -march=native)
  endif()
  target_include_directories(${target} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(${target} PUBLIC OpenMP::OpenMP_CXX)
  # 1 when the CUDA backends are built (cmake/Dependencies.cmake); code tests it with #if.
  target_compile_definitions(${target} PUBLIC ATTNLAB_WITH_CUDA=${ATTNLAB_WITH_CUDA})
endfunction()

# attnlab_library(name SOURCES...) : one static library per top folder.
function(attnlab_library name)
  add_library(${name} STATIC ${ARGN})
  attnlab_target_defaults(${name})
endfunction()
