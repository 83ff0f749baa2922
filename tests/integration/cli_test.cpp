// The attnlab command line: user errors exit with code 2 and one line on stderr; gradcheck and
// ops list the registry. (Training, sampling and eval: integration/train_test.cpp.)
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "tests/support/run_attnlab.h"

namespace {

using Result = attnlab::test::CommandResult;

Result run(const std::string& args) { return attnlab::test::run_attnlab(args); }

std::string write_temp(const std::string& name, const std::string& text) {
  const auto path = std::filesystem::temp_directory_path() / name;
  std::ofstream(path) << text;
  return path.string();
}

TEST(Cli, UserErrorsExitWithTwoAndOneLine) {
  const std::string recipe = write_temp("attnlab_cli_bad.ini", "[model]\nhiden = 3\n");
  for (const std::string& args : {std::string("train ") + recipe, std::string("train /nonexistent/recipe.ini"),
                                  std::string("train"), std::string("frobnicate"), std::string("sample"),
                                  std::string("sample /tmp --tokens=abc"), std::string("gradcheck no_such_op")}) {
    const Result r = run(args);
    EXPECT_EQ(r.code, 2) << args << "\n" << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << args << "\n" << r.err;
    EXPECT_EQ(r.err.rfind("attnlab: ", 0), 0u) << r.err;
  }
  EXPECT_NE(run(std::string("train ") + recipe).err.find("unknown key 'model.hiden'"), std::string::npos);
}

TEST(Cli, GradcheckCommandReportsOps) {
  const Result r = run("gradcheck exp softmax_attention");
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("exp"), std::string::npos);
  EXPECT_NE(r.out.find("softmax_attention"), std::string::npos);
  EXPECT_NE(r.out.find("2 passed, 0 failed"), std::string::npos) << r.out;
  const Result ops = run("ops");
  EXPECT_NE(ops.out.find("softmax_attention\n"), std::string::npos) << ops.out;
}

}  // namespace
