"""Optional native parts. Everything is declared in pyproject.toml; this only adds the SIGBUS
guard extension, which is optional: without a C compiler the build goes on without it and the
server falls back to size checks before each copy (see docs/security.md)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "lmcache_adapters.memory._faultguard",
            ["src/lmcache_adapters/memory/_faultguard.c"],
            optional=True,
        )
    ]
)
