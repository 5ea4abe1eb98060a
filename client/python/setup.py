"""Generates xlmserve/xlm_pb2.py from proto/xlm.proto with protoc when the
package is built (pip install ./client/python), so that generated code is
never committed. Offline: pip install --no-build-isolation ./client/python."""
import os
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))


class BuildWithProtoc(build_py):
    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "xlmserve")
        subprocess.check_call(["protoc", f"--proto_path={PROTO_DIR}", f"--python_out={target}",
                               os.path.join(PROTO_DIR, "xlm.proto")])


setup(cmdclass={"build_py": BuildWithProtoc})
