"""Building blocks, one concept per file. No registry, no training, no I/O."""
from .probe_point import ProbePoint
from .autocast_off import autocast_off
from .device_constant import device_constant
from .alrnn_cell import ALRNNCell
from .attention_probe import add_attention_probes, attention_logit_norms
from .coord_attention import CoordAttention
from .sandglass_block import SandglassBlock
from .hopfield_core import HopfieldCore, hopfield_energy
from .hopfield import Hopfield
from .hopfield_pooling import HopfieldPooling
from .hopfield_layer import HopfieldLayer
from .grassmann_mixing import CausalGrassmannMixing, pluecker, pluecker_linear
from .causal_self_attention import CausalSelfAttention
from .sigma_reparam import SigmaConv2d, SigmaLinear, SigmaReparam, apply_sigma_reparam, remove_sigma_reparam
from .pvrnn_layer import PVRNNLayer, gaussian_kl
from .pvrnn_stack import PackedStack, SkewedStack, pack_levels, posterior_pass, stack_recurrence
from .pvrnn_window import WindowGradient
from .radial import BesselMLPRadial, PolynomialEnvelope, SplineRadial
from .equivariant_mixing import GateMixing, SphericalGridMLP, TensorProductMixing, make_mixing
from .edge_tensor_product import EdgeTensorProduct
from .orderwise_linear import OrderwiseLinear
from .equivariant_conv import EquivariantConvolution

__all__ = ["ProbePoint", "autocast_off", "device_constant", "ALRNNCell", "add_attention_probes", "attention_logit_norms", "CoordAttention", "SandglassBlock", "HopfieldCore", "hopfield_energy", "Hopfield", "HopfieldPooling", "HopfieldLayer",
           "CausalGrassmannMixing", "pluecker", "pluecker_linear", "CausalSelfAttention", "PVRNNLayer", "gaussian_kl", "PackedStack", "SkewedStack",
           "pack_levels", "stack_recurrence", "posterior_pass", "WindowGradient",
           "SigmaReparam", "SigmaLinear", "SigmaConv2d", "apply_sigma_reparam", "remove_sigma_reparam",
           "PolynomialEnvelope", "SplineRadial", "BesselMLPRadial", "SphericalGridMLP", "GateMixing",
           "TensorProductMixing", "make_mixing", "EdgeTensorProduct", "OrderwiseLinear", "EquivariantConvolution"]
