"""The Inside page's tests share the offline MiniLM and SmolLM2, loaded once through the cache."""

from __future__ import annotations

import pytest

from spaces.inside.models import load_decoder, load_encoder


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(None)


@pytest.fixture(scope="module")
def decoder():
    return load_decoder(None)
