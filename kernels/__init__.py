"""Triton kernels with torch reference implementations beside them (none yet: the profile of the
GPU runs decides which fused op, if any, is worth a kernel)."""
