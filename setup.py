"""Builds the C interposer as part of the package's own build.

The interposer is not a Python extension: it is a plain shared library that the agent preloads
into the application (LD_PRELOAD). We still let setuptools' build_ext compile it, because that is
what runs on `pip install .` and `pip install -e .`; we only override the file name so the library
lands at a stable path inside the package (boxer/libboxer_preload.so).
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PRELOAD_NAME = "boxer.libboxer_preload"


class BuildPreload(build_ext):
    def get_ext_filename(self, fullname: str) -> str:
        # setuptools asks both with the dotted full name and with the last component only.
        *package, leaf = fullname.split(".")
        if leaf == PRELOAD_NAME.rsplit(".", 1)[1]:
            return os.path.join(*package, leaf + ".so")
        return super().get_ext_filename(fullname)

    def get_export_symbols(self, ext):  # no PyInit_* symbol: this is not a Python module
        if ext.name == PRELOAD_NAME:
            return []
        return super().get_export_symbols(ext)


setup(
    ext_modules=[
        Extension(
            PRELOAD_NAME,
            sources=[
                "interposer/symbols.c",
                "interposer/config.c",
                "interposer/fdtable.c",
                "interposer/agent.c",
                "interposer/sockets.c",
                "interposer/names.c",
                "interposer/preload.c",
            ],
            depends=["interposer/boxer_internal.h", "interposer/boxer_proto.h"],
            extra_compile_args=[
                "-O2", "-fvisibility=hidden", "-Wall", "-Wextra", "-std=gnu11", "-pthread",
            ],
            extra_link_args=["-ldl", "-pthread"],
        )
    ],
    cmdclass={"build_ext": BuildPreload},
)
