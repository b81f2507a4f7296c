"""What runs on the GPU and its exact CPU twin (`tvwsim.kernels`).

Pruning patterns (`patterns`), encoded weight formats (`formats`), the tile work an
encoding asks of the GPU (`tile_work`), the one prune-encode-schedule path (`prepare`),
CPU reference executors (`reference`), the numpy mma / mma.sp fragment emulation
(`mma_sp`), CUDA sources (`cuda/`), the nvcc build (`build`) and the PyCUDA launchers
(`launch`, which alone imports pycuda, lazily). Importing this package never needs a GPU.
"""
