"""Build of the native extension `gfs._native` from native/ (plain CPython C API)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gfs._native",
            sources=["native/module.c", "native/fastcdc.c", "native/chunkid.c"],
            include_dirs=["native"],
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
        ),
        Extension(
            "gfs._mover",
            sources=["native/mover_module.c", "native/mover.c"],
            include_dirs=["native"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
            extra_link_args=["-pthread"],
        ),
        Extension(
            "gfs._delayline",
            sources=["native/delayline.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
        ),
        Extension(
            "privacy._ec",
            sources=["native/privacy_module.c", "native/privacy_ec.c", "native/privacy_ec_ifma.c"],
            include_dirs=["native"],
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
        ),
    ]
)
