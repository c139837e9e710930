"""Conan 2 recipe for libedgekit, the dependency-free C11 runtime (sdk/runtime).

The recipe has no requirements and downloads nothing: it packages the sdk/runtime folder of this
repository, so it works with no remote configured (ConanCenter is not reachable from our build hosts).

    conan create packaging/conan --build=missing -pr:h <host profile>
"""

import os
import re
from typing import ClassVar

from conan import ConanFile
from conan.errors import ConanException
from conan.tools.cmake import CMake, CMakeToolchain, cmake_layout
from conan.tools.files import copy, load

required_conan_version = ">=2.0"

# sdk/runtime relative to this recipe, while the recipe sits in the repository (export time only:
# in the conan cache the sources live in the export sources folder instead).
_RUNTIME_DIR = os.path.join("..", "..", "sdk", "runtime")


class EdgeKitConan(ConanFile):
    name = "edgekit"
    description = "EdgeKit runtime: a dependency-free C11 library for edge-AI devices, memory and models"
    license = "Proprietary"
    topics = ("edge-ai", "inference", "runtime")
    package_type = "library"
    settings = "os", "arch", "compiler", "build_type"
    options: ClassVar[dict[str, list[bool]]] = {"shared": [True, False], "fPIC": [True, False]}
    default_options: ClassVar[dict[str, bool]] = {"shared": True, "fPIC": True}

    def set_version(self) -> None:
        # The one copy of the version is project(EdgeKitRuntime VERSION x.y.z) in the runtime's CMakeLists.
        cmakelists = os.path.join(self.recipe_folder, _RUNTIME_DIR, "CMakeLists.txt")
        text = load(self, cmakelists)
        match = re.search(r"project\s*\(\s*EdgeKitRuntime\b[^)]*?\bVERSION\s+([0-9]+(?:\.[0-9]+)*)", text)
        if match is None:
            raise ConanException(f"no 'project(EdgeKitRuntime VERSION ...)' found in {cmakelists}")
        self.version = match.group(1)

    def export_sources(self) -> None:
        copy(
            self,
            "*",
            src=os.path.join(self.recipe_folder, _RUNTIME_DIR),
            dst=self.export_sources_folder,
            excludes=("build", "build/*", "build-*", "cmake-build-*", "CMakeUserPresets.json"),
        )

    def config_options(self) -> None:
        if self.settings.os == "Windows":
            del self.options.fPIC

    def configure(self) -> None:
        if self.options.shared:
            self.options.rm_safe("fPIC")
        # C only: the C++ standard and standard library do not change the binary.
        self.settings.rm_safe("compiler.cppstd")
        self.settings.rm_safe("compiler.libcxx")

    def layout(self) -> None:
        cmake_layout(self)

    def generate(self) -> None:
        # CMakeToolchain passes BUILD_SHARED_LIBS (option shared) and CMAKE_POSITION_INDEPENDENT_CODE (fPIC).
        tc = CMakeToolchain(self)
        tc.generate()

    def build(self) -> None:
        cmake = CMake(self)
        cmake.configure()
        cmake.build()

    def package(self) -> None:
        cmake = CMake(self)
        cmake.install()
        # The runtime's own lib/cmake/EdgeKit/EdgeKitConfig.cmake is installed too (for non-conan users of
        # the package folder); conan consumers get the CMakeDeps files generated from package_info below.

    def package_info(self) -> None:
        self.cpp_info.set_property("cmake_file_name", "EdgeKit")
        self.cpp_info.set_property("cmake_target_name", "EdgeKit::edgekit")
        self.cpp_info.set_property("pkg_config_name", "edgekit")
        self.cpp_info.libs = ["edgekit"]
        if self.settings.os in ("Linux", "FreeBSD"):
            self.cpp_info.system_libs = ["pthread", "dl", "m"]
