"""Build for fused_rnn: one extension, fused_rnn._C, with the CPU kernels always and the CUDA
kernels when a CUDA build is possible.

Environment switches (documented in README.md):
  FUSED_RNN_CUDA=0   CPU only.
  FUSED_RNN_CUDA=1   CUDA required: fail loudly if torch has no CUDA or nvcc is missing.
  unset              CUDA when torch was built with CUDA and nvcc is found, else CPU only.
  TORCH_CUDA_ARCH_LIST  target GPUs (default "8.0;9.0"); MAX_JOBS  parallel compile jobs.
  FUSED_RNN_DEBUG=1  -O0 -g (and device debug info, -G, for CUDA) instead of -O3.
  FUSED_RNN_WERROR=1 C++ warnings (-Wall -Wextra) are errors (CI sets it).
The decision never looks at torch.cuda.is_available(): a build machine without a GPU must still
build the CUDA kernels.
"""
import glob
import os
import re
import shutil
import sys
import sysconfig

from setuptools import find_packages, setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home():
    # /usr/local/bin/nvcc on these machines is a wrapper that makes torch guess CUDA_HOME=/usr/local.
    for cand in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if cand and os.path.exists(os.path.join(cand, "bin", "nvcc")):
            return cand
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None


def _want_cuda():
    switch = os.environ.get("FUSED_RNN_CUDA", "").strip()
    cuda_home = _find_cuda_home()
    possible = torch.version.cuda is not None and cuda_home is not None
    if switch == "0":
        return False, cuda_home
    if switch == "1":
        if torch.version.cuda is None:
            raise RuntimeError("FUSED_RNN_CUDA=1 but this torch has no CUDA (torch.version.cuda is None); "
                               "install a CUDA build of torch, e.g. pip install torch==2.14.1")
        if cuda_home is None:
            raise RuntimeError("FUSED_RNN_CUDA=1 but nvcc was not found; set CUDA_HOME")
        return True, cuda_home
    if switch not in ("",):
        raise RuntimeError(f"FUSED_RNN_CUDA must be 0, 1 or unset, got {switch!r}")
    return possible, cuda_home


def _default_max_jobs():
    # nvcc on a torch .cu needs about 2.5 GB; leave a core's worth of headroom.
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gb = 8
    return str(max(1, min(os.cpu_count() or 1, int(mem_gb // 3))))


def _torch_nvidia_include():
    # The CUDA math library headers (cublas_v2.h, cusparse.h, ...) that ATen/cuda/CUDAContext.h pulls
    # in ship inside the torch wheel's nvidia/* packages, not under CUDA_HOME on these machines.
    import site

    dirs = []
    for sp in site.getsitepackages() + [site.getusersitepackages()]:
        dirs += glob.glob(os.path.join(sp, "nvidia", "*", "include"))
    return sorted(set(dirs))


with_cuda, cuda_home = _want_cuda()
os.environ.setdefault("MAX_JOBS", _default_max_jobs())

def _version():
    # Defined once, in fused_rnn/__init__.py.
    with open(os.path.join(ROOT, "fused_rnn", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def _switch(name):
    value = os.environ.get(name, "").strip()
    if value not in ("", "0", "1"):
        raise RuntimeError(f"{name} must be 0, 1 or unset, got {value!r}")
    return value == "1"


debug = _switch("FUSED_RNN_DEBUG")
# Torch's and Python's headers as system headers: -Wextra then judges only this project's code.
# (GCC ignores the -I that cpp_extension adds for a directory also given with -isystem.)
system_includes = []
for d in cpp_extension.include_paths() + [sysconfig.get_paths()["include"]]:
    system_includes += ["-isystem", d]
# -Wno-psabi: simd.h's 256-bit vector types pass by value between always-inline functions only, so
# GCC's note that their ABI differs without AVX (baseline build) never concerns a real call.
# -Wno-unknown-pragmas: the CUDA kernel's source compiles as host C++ too, for its CPU execution in
# tests (csrc/*_kernel_on_cpu.cpp), where GCC does not know its `#pragma unroll` (and GCC 12
# cannot silence that warning for one file).
cxx_flags = ["-O0" if debug else "-O3", "-fno-math-errno", "-ffp-contract=fast", "-Wall", "-Wextra", "-Wno-psabi",
             "-Wno-unknown-pragmas", *system_includes]
if debug:
    cxx_flags.append("-g")
if _switch("FUSED_RNN_WERROR"):
    cxx_flags.append("-Werror")
# at::parallel_for is a header template: its `#pragma omp parallel` runs threads only in code compiled
# with -fopenmp; without it every parallel_for in this extension silently runs on the calling thread.
# (The OpenMP runtime it links, libgomp.so.1, is the one torch has already loaded: same soname.)
link_flags = []
if sys.platform.startswith("linux"):
    cxx_flags.append("-fopenmp")
    link_flags.append("-fopenmp")
sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
define_macros = []
include_dirs = [os.path.join(ROOT, "csrc")]

if with_cuda:
    os.environ["CUDA_HOME"] = cuda_home
    cpp_extension.CUDA_HOME = cuda_home
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    define_macros.append(("FUSED_RNN_WITH_CUDA", "1"))
    include_dirs += _torch_nvidia_include()
    ext = cpp_extension.CUDAExtension(
        "fused_rnn._C",
        sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args={
            "cxx": cxx_flags,
            "nvcc": (["-O0", "-g", "-G"] if debug else ["-O3", "-lineinfo"]) + ["--threads", "2",
                                                                                "-Xptxas=-warn-spills"],
        },
        extra_link_args=link_flags,
    )
else:
    ext = cpp_extension.CppExtension(
        "fused_rnn._C",
        sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_flags,
    )

print(f"fused_rnn: building {'CPU + CUDA' if with_cuda else 'CPU only'} kernels")

setup(
    name="fused_rnn",
    version=_version(),
    description="A drop-in torch.nn.RNN whose whole recurrence runs in one fused C++/CUDA kernel",
    packages=find_packages(include=["fused_rnn", "fused_rnn.*"]),
    ext_modules=[ext],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    python_requires=">=3.9",
    install_requires=["torch>=2.11"],
)
