from __future__ import annotations

import pytest

from app.settings import Settings


@pytest.fixture
def settings() -> Settings:
    """Defaults (50 MP, 500 frames, default widths and presets), no environment involved."""
    return Settings()
