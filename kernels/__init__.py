"""What runs on the GPU and its exact CPU twin.

Pruning patterns (`patterns`), encoded weight formats and the kernel configuration
(`formats`), CPU reference executors (`reference`), CUDA sources (`cuda/`), the nvcc build
(`build`) and the PyCUDA launchers (`launch`, which alone imports pycuda, lazily).
Importing this package never needs a GPU.
"""
