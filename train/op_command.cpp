#include "train/op_command.h"

#include <cstdlib>
#include <map>

#include "layers/all_ops.h"
#include "lib/error.h"
#include "lib/safetensors.h"

namespace attnlab {

namespace {

std::string input_list(const AttentionOpSpec& spec) {
  std::string s = "q k v";
  for (const AttnInputSpec& e : spec.extras)
    s += " " + e.name + (e.optional ? "?" : "") + (e.differentiable ? "" : "(no grad)");
  return s;
}

// The upstream gradients the op reads: dout, then d<name> (optional) for each extra output.
std::string gradient_list(const AttentionOpSpec& spec) {
  std::string s = "dout";
  for (const std::string& o : spec.outputs) s += " d" + o + "?";
  return s;
}

}  // namespace

void list_attention_ops(std::ostream& out) {
  for (const AttentionOpSpec& s : attention_ops().specs()) {
    out << s.name << ": " << s.description << "\n    inputs: " << input_list(s) << (s.cuda ? "; cpu, cuda" : "; cpu")
        << "\n";
    if (!s.outputs.empty()) {
      out << "    differentiable outputs: out";
      for (const std::string& o : s.outputs) out << " " << o;
      out << " (upstream gradients " << gradient_list(s) << ")\n";
    }
    if (s.recurrent) out << "    recurrent: k, v have T rows like q; no mask options\n";
    for (const std::string& o : s.options) out << "    --opt " << o << "\n";
    for (const auto& [in, aux] : s.carried) out << "    carried state: input " << in << " <- output " << aux << "\n";
  }
}

void run_op_command(const OpCommand& cmd, std::ostream& out) {
  const AttentionOpSpec& spec = attention_ops().get(cmd.name);
  AL_CHECK_CONFIG(!cmd.in.empty() && !cmd.out.empty(), "op ", cmd.name,
                  ": needs --in CASE.safetensors and --out RESULT.safetensors");
  const Device device = Device::parse(cmd.device);

  AttnOpArgs args;
  for (const std::string& kv : cmd.options) {
    const size_t eq = kv.find('=');
    AL_CHECK_CONFIG(eq != std::string::npos && eq > 0, "op ", cmd.name, ": --opt needs key=value; got '", kv, "'");
    args.options[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  // The mask is the command's; everything else goes to the op, which must know the key.
  args.mask.causal = args.number(cmd.name, "causal", 1.0) != 0.0;
  args.mask.prefix = static_cast<int64_t>(args.number(cmd.name, "prefix", 0.0));
  args.options.erase("causal");
  args.options.erase("prefix");
  for (const auto& [key, value] : args.options) {
    bool known = false;
    for (const std::string& o : spec.options) known = known || o.rfind(key + ":", 0) == 0;
    AL_CHECK_CONFIG(known, "op ", cmd.name, ": unknown option '", key, "'; this op takes ",
                    spec.options.empty() ? std::string("none") : "", [&] {
                      std::string s;
                      for (const std::string& o : spec.options) s += (s.empty() ? "" : "; ") + o;
                      return s;
                    }(),
                    " (and causal=0|1, prefix=P for the mask)");
  }

  const SafetensorsFile file = load_safetensors(cmd.in);
  DType dtype = DType::f32;  // q's, which every other input must share
  auto take = [&](const std::string& name, bool required) -> Tensor {
    const auto it = file.tensors.find(name);
    AL_CHECK_CONFIG(it != file.tensors.end() || !required, "op ", cmd.name, ": '", cmd.in, "' has no tensor '", name,
                    "'; this op reads ", input_list(spec), " and ", gradient_list(spec));
    if (it == file.tensors.end()) return Tensor();
    const Tensor& t = it->second;
    if (name == "q") dtype = t.dtype();
    AL_CHECK_CONFIG((t.dtype() == DType::f32 || t.dtype() == DType::f64) && t.dtype() == dtype, "op ", cmd.name,
                    ": tensor '", name, "' in '", cmd.in, "' must be F32 or F64 like q (", dtype, "); got ", t);
    return t.to(device);
  };
  AttnOpResult r;
  Tensor q;
  try {
    q = take("q", true);
    args.q = Variable(q, true);
    args.k = Variable(take("k", true), true);
    args.v = Variable(take("v", true), true);
    const Tensor dout = take("dout", true);
    for (const AttnInputSpec& e : spec.extras) {
      const Tensor t = take(e.name, !e.optional);
      args.extras.emplace_back(t.defined() ? Variable(t, e.differentiable) : Variable());
    }
    r = spec.fused(args);
    AL_CHECK_CONFIG(dout.shape() == r.out.shape(), "op ", cmd.name, ": dout must have out's shape ", r.out.str(),
                    "; got dout=", dout);
    // Every differentiable output with its upstream gradient (absent from the file: zeros).
    std::vector<Variable> roots{r.out};
    std::vector<Tensor> grads{dout};
    for (const auto& [name, v] : r.outputs) {
      Tensor d = take("d" + name, false);
      if (!d.defined()) d = Tensor::zeros(v.shape(), v.dtype(), v.device());
      AL_CHECK_CONFIG(d.shape() == v.shape(), "op ", cmd.name, ": d", name, " must have ", name, "'s shape ", v.str(),
                      "; got d", name, "=", d);
      roots.push_back(v);
      grads.push_back(d);
    }
    backward(roots, grads);
  } catch (const ConfigError&) {
    throw;
  } catch (const Error& e) {
    // Shapes, dtypes and devices come from the user's file (or --device): a user error (exit 2).
    throw ConfigError(std::string("op ") + cmd.name + " on '" + cmd.in + "': " + e.what());
  }

  const Device host = Device::cpu();
  std::map<std::string, Tensor> result{{"out", r.out.data().to(host)}};
  for (const auto& [name, v] : r.outputs) result[name] = v.data().to(host);
  auto grad = [&](const std::string& name, const Variable& v) {
    if (v.defined() && v.requires_grad())
      result["d" + name] = v.grad().defined() ? v.grad().to(host) : Tensor::zeros(v.shape(), v.dtype());
  };
  grad("q", args.q);
  grad("k", args.k);
  grad("v", args.v);
  for (size_t i = 0; i < spec.extras.size(); ++i) grad(spec.extras[i].name, args.extras[i]);
  for (const auto& [name, t] : r.aux) result[name] = t.to(host).to(dtype);
  save_safetensors(cmd.out, result, {{"op", cmd.name}, {"device", cmd.device}});
  out << "op " << cmd.name << " on " << cmd.device << ": q " << q << " -> out " << r.out.str() << "; wrote";
  for (const auto& [name, _] : result) out << " " << name;
  out << " to " << cmd.out << "\n";
}

}  // namespace attnlab
