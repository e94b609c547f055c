"""Only for what pyproject.toml cannot say: the cffi extension (API mode) of the placement core."""

from setuptools import setup

setup(cffi_modules=["native/build_cpuset.py:ffibuilder"])
