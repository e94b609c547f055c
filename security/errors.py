"""Errors about the security data files (profiles, policy): they say which file and which field."""

from __future__ import annotations

from titus_common.errors import ConfigError


class DataFileError(ConfigError):
    def __init__(self, file: str, field: str, message: str) -> None:
        super().__init__(f"{file}: {field}: {message}" if field else f"{file}: {message}")
        self.file = file
        self.field = field
        self.message = message
