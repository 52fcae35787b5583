"""Triton kernels, each beside the plain torch reference it must equal (tests/test_kernels.py):

- input_prep: uint8 RGBA + depth + angle tables -> RGB and XYZA in one pass, for loaders whose
  batches arrive raw on the device (DALI from PNG, prepared arrays);
- relu_maxpool: ReLU + 2x2 max-pool, forward and backward, where the H200 profile of the network
  spends its time once the channels are aligned.

A kernel is used only where `python -m bench kernels` measured it beating both eager and
torch.compile on that GPU (kernels.select.use_kernel); everywhere else the torch path runs.
"""
