"""Neural-network building blocks shared by the models and the training loop."""

from symjax.nn.conv import (
    CONV_IMPLS,
    conv_fn,
    conv_general_dilated,
    resolve_conv_impl,
    use_conv_impl,
)

__all__ = [
    "CONV_IMPLS",
    "conv_fn",
    "conv_general_dilated",
    "resolve_conv_impl",
    "use_conv_impl",
]
