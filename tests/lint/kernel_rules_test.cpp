// The kernel-writing rules of specs/cuda_on_cpu.md section 5, checked over the source tree:
// the rules that let one kernel source run both on a GPU and on the simt emulator.
//   1. no raw `<<<...>>>` launches: kernels launch through simt::launch (AL_CUDA_LAUNCH);
//   2. no `extern __shared__`: dynamic shared memory comes from simt::dynamic_smem / SmemCarver;
//   3. no inline PTX (`asm`), `__CUDA_ARCH__` branches, <mma.h>, <cuda_pipeline.h>, CUB or
//      CUTLASS outside lib/simt/arch/, whose wrappers have CPU fallbacks;
//   4. kernel files reach the CUDA runtime only through lib/simt/compat.h (no <cuda_runtime.h>);
//   5. every kernel file opens with a comment (the maths, shapes and launch shape).
// lib/simt/ itself implements the rules and is exempt from 1, 2 and 4.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

// Removes // and /* */ comments and string literals, keeping line breaks, so rules see code only.
std::string code_only(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  enum { code, line_comment, block_comment, string_lit } state = code;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i], n = i + 1 < text.size() ? text[i + 1] : '\0';
    switch (state) {
      case code:
        if (c == '/' && n == '/') state = line_comment, ++i;
        else if (c == '/' && n == '*') state = block_comment, ++i;
        else if (c == '"') state = string_lit, out += '"';
        else out += c;
        break;
      case line_comment:
        if (c == '\n') state = code, out += '\n';
        break;
      case block_comment:
        if (c == '\n') out += '\n';
        if (c == '*' && n == '/') state = code, ++i;
        break;
      case string_lit:
        if (c == '\\') ++i;
        else if (c == '"') state = code, out += '"';
        else if (c == '\n') out += '\n';
        break;
    }
  }
  return out;
}

// Violations of the rules in one file, as "path:line: what"; `rel` is the repository-relative path.
std::vector<std::string> lint(const std::string& rel, const std::string& text) {
  std::vector<std::string> found;
  const bool in_simt = starts_with(rel, "lib/simt/");
  const bool in_arch = starts_with(rel, "lib/simt/arch/");
  const bool kernel_file = rel.size() > 3 && rel.substr(rel.size() - 3) == ".cu";
  struct Rule {
    std::regex pattern;
    const char* what;
    bool exempt;
  };
  const std::vector<Rule> rules = {
      {std::regex(R"(<<<)"), "raw <<<>>> launch: use AL_CUDA_LAUNCH / simt::launch", in_simt},
      {std::regex(R"(extern\s+__shared__)"), "extern __shared__: use simt::dynamic_smem<T>() or simt::SmemCarver",
       in_simt},
      {std::regex(R"(\basm\b|\b__asm__\b)"), "inline PTX outside lib/simt/arch/", in_arch},
      {std::regex(R"(__CUDA_ARCH__)"), "__CUDA_ARCH__ branch outside lib/simt/arch/", in_arch},
      {std::regex(R"(#\s*include\s*[<"](mma\.h|cuda_pipeline\.h|cub/|cutlass/|cute/))"),
       "tensor-core/async/CUB/CUTLASS header outside lib/simt/arch/", in_arch},
      {std::regex(R"(#\s*include\s*[<"](cuda_runtime\.h|cuda_runtime_api\.h|cuda\.h)[>"])"),
       "the CUDA runtime is reached through lib/simt/compat.h", in_simt},
  };
  // Includes are matched on the raw text (the stripper blanks their quoted names).
  std::istringstream raw(text), code(code_only(text));
  std::string raw_line, code_line;
  for (int line = 1; std::getline(raw, raw_line) && std::getline(code, code_line); ++line) {
    for (const Rule& r : rules) {
      if (r.exempt) continue;
      const bool is_include_rule = std::string(r.what).find("header") != std::string::npos ||
                                   std::string(r.what).find("compat.h") != std::string::npos;
      const std::string& subject = is_include_rule ? raw_line : code_line;
      if (is_include_rule && subject.find("#") == std::string::npos) continue;
      if (std::regex_search(subject, r.pattern)) found.push_back(rel + ":" + std::to_string(line) + ": " + r.what);
    }
  }
  if (kernel_file && !starts_with(text, "//"))
    found.push_back(rel + ":1: a kernel file opens with a comment giving its maths, shapes and launch shape");
  return found;
}

TEST(KernelRules, LintCatchesPlantedViolations) {
  EXPECT_EQ(lint("autograd/ops/x/x_cuda.cu", "// ok\nvoid f() { k<<<1, 32>>>(p); }\n").size(), 1u);
  EXPECT_EQ(lint("autograd/ops/x/x_cuda.cu", "// ok\nextern __shared__ float s[];\n").size(), 1u);
  EXPECT_EQ(lint("autograd/ops/x/x_cuda.cu", "// ok\nasm volatile(\"mov.u32 %0, %%laneid;\" : \"=r\"(l));\n").size(),
            1u);
  EXPECT_EQ(lint("autograd/ops/x/x_cuda.cu", "// ok\n#if __CUDA_ARCH__ >= 800\n#endif\n").size(), 1u);
  EXPECT_EQ(lint("autograd/ops/x/x_cuda.cu", "// ok\n#include <mma.h>\n").size(), 1u);
  EXPECT_EQ(lint("autograd/ops/x/x_cuda.cu", "// ok\n#include <cuda_runtime.h>\n").size(), 1u);
  EXPECT_EQ(lint("autograd/ops/x/x_cuda.cu", "__global__ void k() {}\n").size(), 1u);  // no opening comment
  // Comments and strings are not code; lib/simt implements the launch and the arch wrappers.
  EXPECT_TRUE(lint("autograd/ops/x/x_cuda.cu", "// never k<<<1, 1>>>() nor asm\nconst char* s = \"<<<\";\n").empty());
  EXPECT_TRUE(lint("lib/simt/compat.h", "k<<<g, b, s, st>>>(a);\nextern __shared__ unsigned char m[];\n").empty());
  EXPECT_TRUE(lint("lib/simt/arch/mma.h", "#include <mma.h>\nasm(\"\");\n").empty());
}

TEST(KernelRules, SourceTreeFollowsThem) {
  const fs::path root = ATTNLAB_SOURCE_DIR;
  size_t files = 0, kernel_files = 0;
  std::vector<std::string> all;
  for (const char* top : {"lib", "autograd", "layers", "optim", "data", "train", "bench"}) {
    if (!fs::exists(root / top)) continue;
    for (const auto& e : fs::recursive_directory_iterator(root / top)) {
      const std::string ext = e.path().extension().string();
      if (!e.is_regular_file() || (ext != ".cu" && ext != ".cuh" && ext != ".h" && ext != ".cpp")) continue;
      std::ifstream in(e.path());
      std::stringstream ss;
      ss << in.rdbuf();
      const std::string rel = fs::relative(e.path(), root).generic_string();
      for (std::string& v : lint(rel, ss.str())) all.push_back(std::move(v));
      ++files;
      kernel_files += ext == ".cu";
    }
  }
  EXPECT_GT(kernel_files, 0u) << "no kernel files found under " << root;
  for (const std::string& v : all) ADD_FAILURE() << v;
  std::printf("kernel rules: %zu files checked (%zu kernel files), %zu violations\n", files, kernel_files, all.size());
}

}  // namespace
