// `attnlab op NAME --in CASE.safetensors --out RESULT.safetensors [--opt key=value ...]
//  [--device cpu|cuda]`: runs one attention variant's fused core op on tensors read by name from a
// file, so a researcher can cross-check our kernels against another framework.
//
// Reads q [B, H, T, Dk], k [B, H, S, Dk], v [B, H, S, Dv] (S >= T; query i at position S - T + i,
// causal; S = T for a recurrent op such as kda), the upstream gradient dout [B, H, T, Dv] and the
// op's extra inputs by name (others in the file are ignored; an optional extra may be left out);
// for each differentiable extra output NAME of the op (kda's state) an optional upstream gradient
// dNAME (absent = zeros). Writes out, the extra outputs, d<name> for q, k, v and every
// differentiable extra, and the op's auxiliary outputs (carried state, buffer updates), all in
// the inputs' dtype (f32 or f64). Options: the op's own (see `attnlab op --list`) plus
// causal=0|1 (default 1) and prefix=P (a bidirectional prefix of P positions).
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace attnlab {

struct OpCommand {
  std::string name;
  std::string in, out;
  std::vector<std::string> options;  // "key=value"
  std::string device = "cpu";
};

// Every problem with the file, its tensors or the options is a ConfigError/IoError (exit 2);
// nothing is written unless the op ran.
void run_op_command(const OpCommand& cmd, std::ostream& out);

// `attnlab op --list`: every op with its inputs, options and description.
void list_attention_ops(std::ostream& out);

}  // namespace attnlab
