// `attnlab op attnres|delta_attnres --in CASE.safetensors --out RESULT.safetensors [--device D]`:
// the residual routing op (layers/residual/attnres/attnres.h) on tensors read by name.
//
// Reads src [N, B, T, D], r [B, T, D] (delta_attnres only), w [D], g [D], the optional scalar
// gate ([] or [1]; absent = 1) and the upstream gradient dout [B, T, D]; writes out, a [N, B, T]
// (the routing weights) and the gradients dsrc, dr (delta_attnres), dw, dg and dgate (when a gate
// was given), all in src's dtype (f32 or f64). The op takes no --opt options.
#pragma once

#include <ostream>

#include "train/op_command.h"

namespace attnlab {

// Runs cmd when it names a residual routing op and returns true; false for any other name.
bool run_residual_op_command(const OpCommand& cmd, std::ostream& out);

// The residual routing ops' lines of `attnlab op --list`.
void list_residual_ops(std::ostream& out);

}  // namespace attnlab
