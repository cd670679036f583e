import os

import jax
import pytest

jax.config.update("jax_enable_x64", True)

# `flowgap run` keeps compiled programs in a persistent cache; the suite runs the
# CLI in-process and in subprocesses, and must neither write to the user's cache
# nor switch JAX's cache on for its own process (tests that check the cache pass
# their own folder)
os.environ["FLOWGAP_CACHE_DIR"] = "off"


@pytest.fixture
def key():
    return jax.random.key(5678)


@pytest.fixture(autouse=True, scope="module")
def _fresh_compilation_caches():
    """Drop JAX's compiled programs after each test module: the suite runs in one
    process, and without this every module's executables stay resident to the
    end (a late XLA compile aborted on the 24 GiB CI machine)."""
    yield
    jax.clear_caches()
