"""Weight quantization for split inference: W8A16 on the user side, FP8 on the item side.

``quantize_model(model, QuantRecipe(...))`` swaps a model's linears in place (per-token linears,
and under hyformer the sequence side's ``nn.Linear`` layers; ``ugsep.quant.apply`` says what each
becomes); ``calibrate_fp8`` picks the item-side layers that stay in float.
"""

from ugsep.kernels import Backend
from ugsep.quant.apply import calibrate_fp8, quantize_model
from ugsep.quant.recipe import QuantRecipe

__all__ = ["Backend", "QuantRecipe", "calibrate_fp8", "quantize_model"]
