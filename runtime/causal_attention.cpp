// torch.ops.autotp.causal_attention(q, k, v, attn_mask, scale): what passes/sdpa.cpp puts where a
// traced model's eager attention was. It is scaled_dot_product_attention(is_causal=True) once the
// model's own mask is seen to be the plain causal one for this call: 0 where a query may look
// (key j <= query i), a value that softmax turns into an exact 0 elsewhere (-inf, or below half of
// the dtype's lowest, as Hugging Face's finfo.min). The mask is checked on every call because the
// pass proved only that it is a function of the shape: a sliding window shorter than the sequence,
// for one, is causal at short lengths and banded at long ones. Composite: autograd goes through
// scaled_dot_product_attention's own backward.
#include <limits>
#include <string>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "autotp/error.h"

namespace autotp {
namespace {

std::string shape_text(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

void check_causal(const at::Tensor& q, const at::Tensor& k, const at::Tensor& mask) {
  const int64_t S = q.size(-2), T = k.size(-2);
  const std::string hint = "; this model's attention cannot become scaled_dot_product_attention here: run without --sdpa";
  if (mask.dim() < 2 || mask.size(-2) != S || mask.size(-1) != T || S != T)
    throw Error("autotp::causal_attention: the attention mask " + shape_text(mask.sizes()) + " is not [.., " +
                std::to_string(S) + ", " + std::to_string(S) + "] for " + std::to_string(S) + " queries and " +
                std::to_string(T) + " keys" + hint);
  at::Tensor m = mask.detach().to(at::kFloat);
  const double lowest = mask.is_floating_point() ? static_cast<double>(std::numeric_limits<float>::lowest()) : 0;
  const double blocked = mask.scalar_type() == at::kBFloat16 || mask.scalar_type() == at::kFloat
                             ? 0.5 * lowest
                             : (mask.scalar_type() == at::kHalf ? -0.5 * 65504.0 : -1e30);
  at::Tensor allowed = at::ones({S, T}, m.options().dtype(at::kBool)).tril();
  at::Tensor ok = at::where(allowed, m == 0, m <= blocked).all();
  if (!ok.item<bool>())
    throw Error("autotp::causal_attention: the attention mask " + shape_text(mask.sizes()) +
                " is not the plain causal one (0 on and below the diagonal, a blocking value above it: a padding "
                "mask, a sliding window shorter than the " + std::to_string(S) + " tokens, or a cache offset?)" + hint);
}

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& attn_mask,
                            double scale) {
  check_causal(q, k, attn_mask);
  return at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true, scale);
}

}  // namespace
}  // namespace autotp

TORCH_LIBRARY_FRAGMENT(autotp, m) {
  m.def("causal_attention(Tensor q, Tensor k, Tensor v, Tensor attn_mask, float scale) -> Tensor",
        torch::dispatch(c10::DispatchKey::CompositeImplicitAutograd, TORCH_FN(autotp::causal_attention)));
}
