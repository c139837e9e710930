"""Builds and runs a tiny C consumer of the edgekit package (conan create runs it after packaging)."""

import os

from conan import ConanFile
from conan.tools.build import can_run
from conan.tools.cmake import CMake, cmake_layout


class EdgeKitTestConan(ConanFile):
    settings = "os", "arch", "compiler", "build_type"
    generators = "CMakeDeps", "CMakeToolchain"

    def requirements(self) -> None:
        self.requires(self.tested_reference_str)

    def configure(self) -> None:
        # A C program: the C++ settings do not apply.
        self.settings.rm_safe("compiler.cppstd")
        self.settings.rm_safe("compiler.libcxx")

    def layout(self) -> None:
        cmake_layout(self)

    def build(self) -> None:
        cmake = CMake(self)
        cmake.configure()
        cmake.build()

    def test(self) -> None:
        # Cross builds (e.g. aarch64 from x86_64) build the consumer but cannot run it here.
        if can_run(self):
            self.run(os.path.join(self.cpp.build.bindir, "edgekit_test_package"), env="conanrun")
