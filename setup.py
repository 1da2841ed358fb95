"""Build hook only (metadata is in setup.cfg): ship the weights manifest inside the package.

``weights_manifest/*.json`` at the repository root is the source of truth. ``build_py`` copies it
to ``repan_zoo/weights/manifest/`` in the build, so a wheel carries it and
``repan_zoo.manifest.manifest_dir()`` finds it when the package is installed non-editable.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithManifest(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "repan_zoo" / "weights" / "manifest"
        self.mkpath(str(target))
        for source in sorted((HERE / "weights_manifest").glob("*.json")):
            self.copy_file(str(source), str(target / source.name))


setup(cmdclass={"build_py": BuildPyWithManifest})
