"""Builds the package's two C libraries as part of its own build.

Neither is a Python extension: the interposer is a plain shared library that the agent preloads
into the application (LD_PRELOAD), and the agent's fast path (boxer/agent/fastpath.c) is loaded
with ctypes. We still let setuptools' build_ext compile them, because that is what runs on
`pip install .` and `pip install -e .`; we only override the file names so the libraries land at
stable paths inside the package (boxer/libboxer_preload.so, boxer/libboxer_fastpath.so).
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PRELOAD_NAME = "boxer.libboxer_preload"
FASTPATH_NAME = "boxer.libboxer_fastpath"  # the agent's native fast path, loaded with ctypes
PLAIN_LIBRARIES = {PRELOAD_NAME, FASTPATH_NAME}
C_FLAGS = ["-O2", "-fvisibility=hidden", "-Wall", "-Wextra", "-std=gnu11", "-pthread"]


class BuildPreload(build_ext):
    def get_ext_filename(self, fullname: str) -> str:
        # setuptools asks both with the dotted full name and with the last component only.
        *package, leaf = fullname.split(".")
        if leaf in {name.rsplit(".", 1)[1] for name in PLAIN_LIBRARIES}:
            return os.path.join(*package, leaf + ".so")
        return super().get_ext_filename(fullname)

    def get_export_symbols(self, ext):  # no PyInit_* symbol: these are not Python modules
        if ext.name in PLAIN_LIBRARIES:
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
                "interposer/exec.c",
                "interposer/preload.c",
            ],
            depends=["interposer/boxer_internal.h", "interposer/boxer_proto.h"],
            extra_compile_args=C_FLAGS,
            extra_link_args=["-ldl", "-pthread"],
        ),
        Extension(
            FASTPATH_NAME,
            sources=["boxer/agent/fastpath.c", "boxer/agent/peercheck.c"],
            include_dirs=["interposer"],
            depends=["interposer/boxer_proto.h", "boxer/agent/peercheck.h"],
            extra_compile_args=C_FLAGS,
            extra_link_args=["-pthread"],
        ),
    ],
    cmdclass={"build_ext": BuildPreload},
)
