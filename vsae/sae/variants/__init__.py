"""The SAE variants of SPEC section 7, one module each; importing this package registers them."""

from vsae.sae.variants.batchtopk import BatchTopKSAE
from vsae.sae.variants.ksvd import KSVDDictionary
from vsae.sae.variants.relu_l1 import ReluL1SAE
from vsae.sae.variants.relu_l1_scaled import ReluL1ScaledSAE
from vsae.sae.variants.topk import TopKSAE

__all__ = ["BatchTopKSAE", "KSVDDictionary", "ReluL1SAE", "ReluL1ScaledSAE", "TopKSAE"]
