"""CPU kernels: threads.py (torch threads follow the cores other processes leave free), winograd.py (the
trunk's 3x3 convolutions), narrow_conv.py (the 3-channel last convolution), native.py + native_kernels.c
(their C loops, built on first use)."""
