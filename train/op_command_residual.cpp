#include "train/op_command_residual.h"

#include <map>
#include <string>

#include "layers/residual/attnres/attnres.h"
#include "lib/error.h"
#include "lib/safetensors.h"

namespace attnlab {

void list_residual_ops(std::ostream& out) {
  out << "attnres: residual routing, replacement form: out = gate * sum_i softmax_i(w . (g * src_i / rms(src_i))) "
         "src_i\n    inputs: src [N, B, T, D], w [D], g [D], gate? (scalar); outputs out, a; cpu, cuda\n"
      << "delta_attnres: residual routing, additive form: out = r + gate * sum_i a_i src_i (a as attnres)\n"
         "    inputs: src [N, B, T, D], r [B, T, D], w [D], g [D], gate? (scalar); outputs out, a; cpu, cuda\n";
}

bool run_residual_op_command(const OpCommand& cmd, std::ostream& out) {
  if (cmd.name != "attnres" && cmd.name != "delta_attnres") return false;
  const bool delta = cmd.name == "delta_attnres";
  AL_CHECK_CONFIG(!cmd.in.empty() && !cmd.out.empty(), "op ", cmd.name,
                  ": needs --in CASE.safetensors and --out RESULT.safetensors");
  AL_CHECK_CONFIG(cmd.options.empty(), "op ", cmd.name, ": takes no --opt options; got '", cmd.options.front(), "'");
  const Device device = Device::parse(cmd.device);
  const char* reads = delta ? "src, r, w, g, gate (optional) and dout" : "src, w, g, gate (optional) and dout";

  const SafetensorsFile file = load_safetensors(cmd.in);
  DType dtype = DType::f32;
  auto take = [&](const std::string& name, bool required) -> Tensor {
    const auto it = file.tensors.find(name);
    AL_CHECK_CONFIG(it != file.tensors.end() || !required, "op ", cmd.name, ": '", cmd.in, "' has no tensor '", name,
                    "'; this op reads ", reads);
    if (it == file.tensors.end()) return Tensor();
    const Tensor& t = it->second;
    if (name == "src") dtype = t.dtype();
    AL_CHECK_CONFIG((t.dtype() == DType::f32 || t.dtype() == DType::f64) && t.dtype() == dtype, "op ", cmd.name,
                    ": tensor '", name, "' in '", cmd.in, "' must be F32 or F64 like src (", dtype, "); got ", t);
    return t.to(device);
  };
  Variable src, r, w, g, gate;
  AttnResResult res;
  try {
    src = Variable(take("src", true), true);
    if (delta) r = Variable(take("r", true), true);
    w = Variable(take("w", true), true);
    g = Variable(take("g", true), true);
    const Tensor gt = take("gate", false);
    if (gt.defined()) gate = Variable(gt, true);
    const Tensor dout = take("dout", true);
    res = delta ? delta_attnres(src, r, w, g, gate) : attnres(src, w, g, gate);
    AL_CHECK_CONFIG(dout.shape() == res.out.shape(), "op ", cmd.name, ": dout must have out's shape ", res.out.str(),
                    "; got dout=", dout);
    res.out.backward(dout);
  } catch (const ConfigError&) {
    throw;
  } catch (const Error& e) {
    // Shapes, dtypes and devices come from the user's file (or --device): a user error (exit 2).
    throw ConfigError(std::string("op ") + cmd.name + " on '" + cmd.in + "': " + e.what());
  }
  const Device host = Device::cpu();
  std::map<std::string, Tensor> result{{"out", res.out.data().to(host)}, {"a", res.a.to(host)}};
  auto grad = [&](const std::string& name, const Variable& v) {
    if (v.defined()) result["d" + name] = v.grad().defined() ? v.grad().to(host) : Tensor::zeros(v.shape(), v.dtype());
  };
  grad("src", src);
  grad("r", r);
  grad("w", w);
  grad("g", g);
  grad("gate", gate);
  save_safetensors(cmd.out, result, {{"op", cmd.name}, {"device", cmd.device}});
  out << "op " << cmd.name << " on " << cmd.device << ": src " << src.data() << " -> out " << res.out.str()
      << "; wrote";
  for (const auto& [name, _] : result) out << " " << name;
  out << " to " << cmd.out << "\n";
  return true;
}

}  // namespace attnlab
