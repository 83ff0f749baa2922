// The attnlab binary end to end: the demo trains (its loss falls), and user errors exit with
// code 2 and one line on stderr.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

namespace {

struct Result {
  int code;
  std::string out, err;
};

Result run(const std::string& args) {
  const auto dir = std::filesystem::temp_directory_path();
  const std::string err_path = (dir / "attnlab_cli_test.err").string();
  const std::string cmd = std::string(ATTNLAB_BIN) + " " + args + " 2>" + err_path;
  Result r{-1, "", ""};
  FILE* p = popen(cmd.c_str(), "r");
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream e(err_path);
  std::stringstream ss;
  ss << e.rdbuf();
  r.err = ss.str();
  return r;
}

std::string write_temp(const std::string& name, const std::string& text) {
  const auto path = std::filesystem::temp_directory_path() / name;
  std::ofstream(path) << text;
  return path.string();
}

TEST(Cli, DemoLossFalls) {
  std::string text;
  for (int i = 0; i < 300; ++i) text += "the cat sat on the mat and the dog sat on the log. ";
  const std::string corpus = write_temp("attnlab_cli_corpus.txt", text);
  const Result r = run("demo --data.text=" + corpus + " --train.steps=150 --train.log_every=50 --sample.bytes=40");
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  std::regex line(R"(step +(\d+)/\d+ +train loss ([0-9.]+))");
  std::vector<double> losses;
  for (std::sregex_iterator it(r.out.begin(), r.out.end(), line), end; it != end; ++it)
    losses.push_back(std::stod((*it)[2]));
  ASSERT_GE(losses.size(), 3u) << r.out;
  EXPECT_GT(losses.front(), 4.5) << "an untrained byte model starts near ln(256) = 5.5";
  EXPECT_LT(losses.back(), losses.front() - 3.0) << r.out;
  EXPECT_NE(r.out.find("validation loss"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("sample"), std::string::npos) << r.out;
}

TEST(Cli, UserErrorsExitWithTwoAndOneLine) {
  const std::string recipe = write_temp("attnlab_cli_bad.ini", "[model]\nhiden = 3\n");
  for (const std::string& args : {std::string("demo ") + recipe, std::string("demo /nonexistent/recipe.ini"),
                                  std::string("demo --data.text=/nonexistent/corpus.txt"), std::string("frobnicate"),
                                  std::string("demo --train.steps=abc"), std::string("gradcheck no_such_op")}) {
    const Result r = run(args);
    EXPECT_EQ(r.code, 2) << args << "\n" << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << args << "\n" << r.err;
    EXPECT_EQ(r.err.rfind("attnlab: ", 0), 0u) << r.err;
  }
  EXPECT_NE(run(std::string("demo ") + recipe).err.find("unknown key 'model.hiden'"), std::string::npos);
}

TEST(Cli, GradcheckCommandReportsOps) {
  const Result r = run("gradcheck exp matmul");
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("exp"), std::string::npos);
  EXPECT_NE(r.out.find("2 passed, 0 failed"), std::string::npos) << r.out;
}

}  // namespace
